-- Leases the locked candidates $1 each to its holder $2 (agent $3) until $6 and increments each
-- one's attempt, the fencing token. $4 is now, $5 the write timeout.
UPDATE jobs SET state = 'dispatched', lease_holder = lease.holder, agent = lease.agent, lease_expires_ms = $6,
       attempts = attempts + 1, dispatched_ms = $4, updated_ms = $4,
       taken_over = (taken_over OR state = 'dispatched')
  FROM unnest($1::text[], $2::text[], $3::text[]) AS lease (id, holder, agent)
 WHERE jobs.id = lease.id
   -- Checked again on the locked row: it is still claimable.
   AND ((jobs.state = 'queued' AND jobs.not_before_ms <= $4)
        OR (jobs.state = 'dispatched' AND jobs.lease_expires_ms + $5 < $4))
RETURNING jobs.id, jobs.kind, jobs.domain, jobs.target_kind, jobs.target_value, jobs.must_change, jobs.unlock,
       jobs.client, jobs.state, jobs.created_ms, jobs.updated_ms, jobs.dispatched_ms, jobs.finished_ms, jobs.agent,
       jobs.attempts, jobs.error_code, jobs.error_message, jobs.directory_code, jobs.account_dn, jobs.verified,
       jobs.pwd_last_set, jobs.secret, jobs.lease_expires_ms, jobs.enforce_history, jobs.generate_length,
       jobs.generate_mode, jobs.recipient_key, jobs.password_matches, jobs.account_state, jobs.notes,
       jobs.result_secret_encoding, jobs.result_secret IS NOT NULL, jobs.secret_retrieved_ms, jobs.parent_id,
       jobs.taken_over
