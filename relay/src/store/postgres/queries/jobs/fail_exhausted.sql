-- Fails the claimable jobs of the domains $1 that have no attempt left ($4 = jobs.max_attempts),
-- without waiting out a retry back-off they could never use. $2 is now, $3 the write timeout.
UPDATE jobs SET state = 'failed', error_code = 'delivery_exhausted',
       error_message = 'no agent completed the job in ' || attempts || ' deliveries (jobs.max_attempts)'
                       || coalesce('; last error: ' || error_message, ''),
       secret = NULL, lease_holder = NULL, finished_ms = $2, updated_ms = $2
 WHERE domain = ANY($1) AND kind != 'reconcile_batch'
   AND (state = 'queued' OR (state = 'dispatched' AND lease_expires_ms + $3 < $2))
   AND attempts >= $4
RETURNING parent_id
