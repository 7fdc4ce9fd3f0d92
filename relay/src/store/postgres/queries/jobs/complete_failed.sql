-- Records a final failure and erases the secret, fenced like every result.
UPDATE jobs SET state = 'failed', error_code = $4, error_message = $5, directory_code = $6,
       secret = NULL, finished_ms = $7, updated_ms = $7
 WHERE id = $1 AND state = 'dispatched' AND lease_holder = $2 AND attempts = $3
RETURNING parent_id
