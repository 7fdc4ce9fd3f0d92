-- What follows an attempt of a pending delivery last claimed by replica $8, which lets it go (it
-- stays its last holder, so a replica whose claim was taken over changes nothing); the body is
-- fixed by the first attempt.
UPDATE webhook_deliveries SET state = $2, attempts = coalesce($3, attempts),
       next_attempt_ms = coalesce($4, next_attempt_ms), finished_ms = $5, error = $6,
       payload = coalesce(payload, $7), claimed_until_ms = NULL
 WHERE id = $1 AND state = 'pending' AND claimed_by = $8
