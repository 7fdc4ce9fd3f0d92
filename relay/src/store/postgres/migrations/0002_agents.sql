-- Version 2 (SQLite's version 8): the known agents, recorded by every replica's agent sessions.
CREATE TABLE agents (
    name            TEXT PRIMARY KEY,           -- from the agent's certificate
    domains         TEXT NOT NULL,              -- JSON array: the domains its last stream serves
    version         TEXT NOT NULL,
    cert_serial     TEXT NOT NULL,              -- hexadecimal
    cert_expires_ms BIGINT NOT NULL,
    first_seen_ms   BIGINT NOT NULL,
    last_seen_ms    BIGINT NOT NULL,
    connected       BOOLEAN NOT NULL,           -- true while the stream below is open
    replica         TEXT NOT NULL,              -- the relay replica of its last stream
    stream          TEXT NOT NULL,              -- that stream's id
    peer            TEXT,                       -- address:port it connected from
    opened_ms       BIGINT NOT NULL,            -- when that stream opened
    directories     TEXT NOT NULL DEFAULT '[]', -- JSON: the DC health of its last heartbeat
    jobs_in_flight  BIGINT NOT NULL DEFAULT 0,
    jobs_done       BIGINT NOT NULL DEFAULT 0,
    jobs_failed     BIGINT NOT NULL DEFAULT 0
);
