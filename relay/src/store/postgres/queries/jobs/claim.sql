-- Leases up to $5 claimable jobs of the domains $1 to the holder $6 (agent $7) until $8, oldest
-- first, and increments each one's attempt, the fencing token. $2 is now, $3 the write timeout,
-- $4 the oldest creation time still within the time to live.
--
-- Claimable: queued and due, or dispatched with a lease that lapsed longer ago than the longest
-- write (its holder can no longer be writing); and the account is free: nothing older of it is
-- unfinished, and no attempt on it is unresolved. So at most one job per account is ever a
-- candidate, and SKIP LOCKED lets concurrent claims (other replicas) pass over each other's.
WITH candidates AS (
    SELECT id FROM jobs
     WHERE domain = ANY($1) AND kind != 'reconcile_batch'
       AND ((state = 'queued' AND not_before_ms <= $2)
            OR (state = 'dispatched' AND lease_expires_ms + $3 < $2))
       AND created_ms >= $4
       AND NOT EXISTS (SELECT 1 FROM jobs o
                        WHERE o.account_key = jobs.account_key AND o.id != jobs.id
                          AND ((o.state IN ('queued', 'dispatched')
                                AND (o.created_ms < jobs.created_ms
                                     OR (o.created_ms = jobs.created_ms AND o.id < jobs.id)))
                               OR (o.state = 'dispatched' AND o.lease_expires_ms + $3 >= $2)))
     ORDER BY created_ms, id
     LIMIT $5
       FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET state = 'dispatched', lease_holder = $6, agent = $7, lease_expires_ms = $8,
       attempts = attempts + 1, dispatched_ms = $2, updated_ms = $2,
       taken_over = (taken_over OR state = 'dispatched')
  FROM candidates
 WHERE jobs.id = candidates.id
   -- Checked again on the locked row: another replica may have claimed it since the snapshot.
   AND ((jobs.state = 'queued' AND jobs.not_before_ms <= $2)
        OR (jobs.state = 'dispatched' AND jobs.lease_expires_ms + $3 < $2))
RETURNING jobs.id, jobs.kind, jobs.domain, jobs.target_kind, jobs.target_value, jobs.must_change, jobs.unlock,
       jobs.client, jobs.state, jobs.created_ms, jobs.updated_ms, jobs.dispatched_ms, jobs.finished_ms, jobs.agent,
       jobs.attempts, jobs.error_code, jobs.error_message, jobs.directory_code, jobs.account_dn, jobs.verified,
       jobs.pwd_last_set, jobs.secret, jobs.lease_expires_ms, jobs.enforce_history, jobs.generate_length,
       jobs.generate_mode, jobs.recipient_key, jobs.password_matches, jobs.account_state, jobs.notes,
       jobs.result_secret_encoding, jobs.result_secret IS NOT NULL, jobs.secret_retrieved_ms, jobs.parent_id,
       jobs.taken_over
