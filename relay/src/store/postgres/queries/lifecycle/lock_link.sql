-- The link $1 with its ciphertext, locked until the claim decides.
SELECT l.task_processing_result_id, l.link_proof, l.link_expires_ms, l.link_claimed_ms, l.job_id, j.result_secret
  FROM lifecycle_requests l LEFT JOIN jobs j ON j.id = l.job_id
 WHERE l.link_id = $1
   FOR UPDATE OF l
