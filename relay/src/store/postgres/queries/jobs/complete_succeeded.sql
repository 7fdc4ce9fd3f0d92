-- Records a success, fenced: only while the job is dispatched to holder $2 under attempt $3; $13
-- is this replica (it holds an initial password's link key).
UPDATE jobs SET state = 'succeeded', account_dn = $4, verified = $5, pwd_last_set = $6,
       password_matches = CASE WHEN kind = 'verify' THEN $7::boolean END,
       account_state = $8, notes = $9,
       result_secret_encoding = $10, result_secret = $11,
       error_code = NULL, error_message = NULL, directory_code = NULL,
       secret = NULL, finished_ms = $12, updated_ms = $12, finished_by = $13
 WHERE id = $1 AND state = 'dispatched' AND lease_holder = $2 AND attempts = $3
RETURNING parent_id
