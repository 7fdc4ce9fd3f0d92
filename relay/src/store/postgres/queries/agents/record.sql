-- An agent's hello or heartbeat: connected through stream $8 of replica $7, seen at $6, its
-- counters grown by $13/$14; its first sighting is kept, and its DC health when $11 is NULL.
INSERT INTO agents (name, domains, version, cert_serial, cert_expires_ms, first_seen_ms, last_seen_ms, connected,
                    replica, stream, peer, opened_ms, directories, jobs_in_flight, jobs_done, jobs_failed)
VALUES ($1, $2, $3, $4, $5, $6, $6, TRUE, $7, $8, $9, $10, coalesce($11::text, '[]'), $12, $13, $14)
ON CONFLICT (name) DO UPDATE SET
    domains = excluded.domains, version = excluded.version, cert_serial = excluded.cert_serial,
    cert_expires_ms = excluded.cert_expires_ms,
    last_seen_ms = greatest(agents.last_seen_ms, excluded.last_seen_ms), connected = TRUE,
    replica = excluded.replica, stream = excluded.stream, peer = excluded.peer, opened_ms = excluded.opened_ms,
    directories = coalesce($11::text, agents.directories), jobs_in_flight = excluded.jobs_in_flight,
    jobs_done = agents.jobs_done + excluded.jobs_done, jobs_failed = agents.jobs_failed + excluded.jobs_failed
