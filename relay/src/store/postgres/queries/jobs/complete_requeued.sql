-- Queues a job again after a retryable failure (not before $7), fenced like every result.
UPDATE jobs SET state = 'queued', error_code = $4, error_message = $5, directory_code = $6,
       lease_holder = NULL, lease_expires_ms = NULL, not_before_ms = $7, updated_ms = $8
 WHERE id = $1 AND state = 'dispatched' AND lease_holder = $2 AND attempts = $3
RETURNING parent_id
