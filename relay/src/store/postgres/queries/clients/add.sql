-- Registers an API client; nothing when the name is taken.
INSERT INTO api_clients (name, token_sha256, created_ms, scopes) VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO NOTHING
