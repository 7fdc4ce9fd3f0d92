-- Creates or replaces a client's webhook; nothing when there is no such client.
INSERT INTO webhooks (client, url, events, secret, created_ms, updated_ms)
SELECT $1, $2, $3, $4, $5, $5 WHERE EXISTS (SELECT 1 FROM api_clients WHERE name = $1)
ON CONFLICT (client) DO UPDATE SET url = excluded.url, events = excluded.events,
    secret = excluded.secret, updated_ms = excluded.updated_ms
