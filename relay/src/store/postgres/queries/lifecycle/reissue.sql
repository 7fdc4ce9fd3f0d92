-- The replica holding the link key of request $1 died: back to resolving without a job, the link
-- forgotten, noting why ($3). Once per request, and only by the replica $2 that claimed it. $4 is now.
UPDATE lifecycle_requests SET stage = 'resolving', job_id = NULL, reissues = reissues + 1,
       delivery = NULL, delivery_detail = $3, link_id = NULL, link_proof = NULL, link_expires_ms = NULL,
       link_views = 0, key_replica = NULL, next_attempt_ms = 0, claimed_until_ms = NULL, updated_ms = $4
 WHERE task_processing_result_id = $1 AND reissues = 0 AND stage IN ('applying', 'delivering')
   AND claimed_by = $2
RETURNING 1
