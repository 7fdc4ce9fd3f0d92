-- Erases the ciphertexts of links that expired unclaimed by $1.
UPDATE jobs SET result_secret = NULL
 WHERE result_secret IS NOT NULL AND id IN (
     SELECT job_id FROM lifecycle_requests
      WHERE link_claimed_ms IS NULL AND link_expires_ms IS NOT NULL AND link_expires_ms <= $1)
