-- Claims for replica $3 until $4 up to $2 pending deliveries due at $1 that no replica holds, the
-- longest due first, each with its client's webhook. SKIP LOCKED: replicas claiming at once take
-- different rows.
WITH claimed AS (
    UPDATE webhook_deliveries SET claimed_by = $3, claimed_until_ms = $4
     WHERE id IN (SELECT id FROM webhook_deliveries
                   WHERE state = 'pending' AND next_attempt_ms <= $1
                     AND (claimed_until_ms IS NULL OR claimed_until_ms <= $1)
                   ORDER BY next_attempt_ms, created_ms
                   LIMIT $2
                   FOR UPDATE SKIP LOCKED)
    RETURNING id, client, job_id, event, attempts, created_ms, payload, next_attempt_ms
)
SELECT c.id, c.client, c.job_id, c.event, c.attempts, c.created_ms, c.payload, w.url, w.events, w.secret
  FROM claimed c LEFT JOIN webhooks w ON w.client = c.client
 ORDER BY c.next_attempt_ms, c.created_ms
