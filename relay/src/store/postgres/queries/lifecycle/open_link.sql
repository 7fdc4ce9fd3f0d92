-- applying → delivering: the link $2 with the claim proof $3, until $4, sent by replica $6, which
-- must be the one that recorded the job's result (it holds the link key). $5 is now.
UPDATE lifecycle_requests SET stage = 'delivering', delivery = 'pending', link_id = $2,
       link_proof = $3, link_expires_ms = $4, updated_ms = $5, key_replica = $6, claimed_until_ms = NULL
 WHERE task_processing_result_id = $1 AND stage = 'applying'
   AND job_id IN (SELECT id FROM jobs WHERE finished_by = $6)
