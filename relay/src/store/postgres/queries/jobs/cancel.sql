-- Fails a queued job with `cancelled` and erases its secret.
UPDATE jobs SET state = 'failed', error_code = 'cancelled',
       error_message = 'cancelled by the API client before an agent took it',
       secret = NULL, lease_holder = NULL, finished_ms = $2, updated_ms = $2
 WHERE id = $1 AND state = 'queued'
