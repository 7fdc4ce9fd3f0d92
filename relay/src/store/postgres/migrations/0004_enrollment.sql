-- Agent enrollment (SQLite version 11 mirrors it): one-time enrollment tokens, stored by id with
-- the SHA-256 of their secret (never the secret), and the deny list of revoked agents.
CREATE TABLE enrollment_tokens (
    id            TEXT PRIMARY KEY,   -- hexadecimal: the token's id
    secret_sha256 BYTEA NOT NULL,
    agent         TEXT NOT NULL,      -- the name the certificate will carry
    domains       TEXT NOT NULL,      -- JSON array: the domains it will carry
    created_ms    BIGINT NOT NULL,
    expires_ms    BIGINT NOT NULL,
    used_ms       BIGINT,             -- set once, by the enrollment that used it
    used_by       TEXT                -- the address that used it
);

-- Certificates of the agent issued (notBefore) before revoked_ms are refused.
CREATE TABLE agent_revocations (
    agent      TEXT PRIMARY KEY,
    revoked_ms BIGINT NOT NULL
);
