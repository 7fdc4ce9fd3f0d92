INSERT INTO enrollment_tokens (id, secret_sha256, agent, domains, created_ms, expires_ms)
VALUES ($1, $2, $3, $4, $5, $6)
