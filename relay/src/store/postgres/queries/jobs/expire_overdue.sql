-- Fails jobs created before $2 and erases their secrets: queued ones, and dispatched ones whose
-- lease and write timeout ($3) have passed. $1 is now.
UPDATE jobs SET state = 'failed', error_code = 'expired',
       error_message = 'no agent completed the job within its time to live (jobs.ttl_hours)',
       directory_code = NULL, secret = NULL, lease_holder = NULL, finished_ms = $1, updated_ms = $1
 WHERE created_ms < $2 AND kind != 'reconcile_batch'
   AND (state = 'queued' OR (state = 'dispatched' AND lease_expires_ms + $3 < $1))
RETURNING parent_id
