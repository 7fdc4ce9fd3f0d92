SELECT secret_sha256, agent, domains, expires_ms, used_ms FROM enrollment_tokens WHERE id = $1
