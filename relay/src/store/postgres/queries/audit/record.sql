INSERT INTO audit_events (at_ms, event_id, event, replica, client, agent, domain, job_id, address, details)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
