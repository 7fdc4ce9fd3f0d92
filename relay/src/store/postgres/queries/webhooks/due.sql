-- Up to $2 pending deliveries due at $1, the longest due first, with their client's webhook.
SELECT d.id, d.client, d.job_id, d.event, d.attempts, d.created_ms, d.payload, w.url, w.events, w.secret
  FROM webhook_deliveries d LEFT JOIN webhooks w ON w.client = d.client
 WHERE d.state = 'pending' AND d.next_attempt_ms <= $1
 ORDER BY d.next_attempt_ms, d.created_ms
 LIMIT $2
