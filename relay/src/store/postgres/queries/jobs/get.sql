-- One job.
SELECT id, kind, domain, target_kind, target_value, must_change, unlock, client, state,
       created_ms, updated_ms, dispatched_ms, finished_ms, agent, attempts, error_code, error_message, directory_code,
       account_dn, verified, pwd_last_set, secret, lease_expires_ms, enforce_history, generate_length, generate_mode,
       recipient_key, password_matches, account_state, notes, result_secret_encoding, result_secret IS NOT NULL,
       secret_retrieved_ms, parent_id
  FROM jobs WHERE id = $1
