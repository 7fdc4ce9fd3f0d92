-- applying → delivering: the link $2 with the claim proof $3, until $4. $5 is now.
UPDATE lifecycle_requests SET stage = 'delivering', delivery = 'pending', link_id = $2,
       link_proof = $3, link_expires_ms = $4, updated_ms = $5
 WHERE task_processing_result_id = $1 AND stage = 'applying'
