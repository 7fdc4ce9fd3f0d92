-- A client's deliveries, newest first, in state $2 when it is not NULL.
SELECT id, event, job_id, state, created_ms, next_attempt_ms, finished_ms, error
  FROM webhook_deliveries WHERE client = $1 AND ($2::text IS NULL OR state = $2)
 ORDER BY created_ms DESC, id DESC
 LIMIT $3
