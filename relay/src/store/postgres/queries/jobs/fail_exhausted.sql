-- Fails the locked candidates $1 that have no attempt left, without waiting out a retry back-off
-- they could never use; each only while still claimable. $2 is now, $3 the write timeout.
UPDATE jobs SET state = 'failed', error_code = 'delivery_exhausted',
       error_message = 'no agent completed the job in ' || attempts || ' deliveries (jobs.max_attempts)'
                       || coalesce('; last error: ' || error_message, ''),
       secret = NULL, lease_holder = NULL, finished_ms = $2, updated_ms = $2
 WHERE id = ANY($1)
   AND (state = 'queued' OR (state = 'dispatched' AND lease_expires_ms + $3 < $2))
RETURNING parent_id
