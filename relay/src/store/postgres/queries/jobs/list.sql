-- A client's jobs, oldest first; each filter applies when its parameter is not NULL.
SELECT id, kind, domain, target_kind, target_value, must_change, unlock, client, state,
       created_ms, updated_ms, dispatched_ms, finished_ms, agent, attempts, error_code, error_message, directory_code,
       account_dn, verified, pwd_last_set, secret, lease_expires_ms, enforce_history, generate_length, generate_mode,
       recipient_key, password_matches, account_state, notes, result_secret_encoding, result_secret IS NOT NULL,
       secret_retrieved_ms, parent_id
  FROM jobs
 WHERE client = $1
   AND ($2::text IS NULL OR state = $2)
   AND ($3::text IS NULL OR domain = $3)
   AND ($4::bigint IS NULL OR created_ms >= $4)
   AND ($5::text IS NULL OR id > $5)
 ORDER BY id
 LIMIT $6
