-- The claim's candidates in domain $1, locked, in claim order: queued jobs that are due and whose
-- account is free, and dispatched jobs whose lease lapsed longer ago than the longest write ($3)
-- (their holder can no longer be writing) and whose account is free; or either with no attempt
-- left ($5 = jobs.max_attempts), which the claim fails. $2 is now, $4 the oldest creation time
-- within the time to live, $6 the most candidates of each kind.
--
-- Each is one ordered search of jobs_claim_order that stops at the limit, the account checked by
-- jobs_account: the account is free when nothing older of it is unfinished and no attempt on it is
-- unresolved. So at most one job per account is ever a candidate, and SKIP LOCKED lets concurrent
-- claims (other replicas) pass over each other's.
WITH queued AS (
    SELECT id, created_ms, attempts FROM jobs
     WHERE domain = $1 AND state = 'queued' AND created_ms >= $4 AND kind <> 'reconcile_batch'
       AND (attempts >= $5
            OR (not_before_ms <= $2
                AND NOT EXISTS (SELECT 1 FROM jobs o
                                 WHERE o.account_key = jobs.account_key AND o.state IN ('queued', 'dispatched')
                                   AND o.id <> jobs.id
                                   AND (o.created_ms < jobs.created_ms
                                        OR (o.created_ms = jobs.created_ms AND o.id < jobs.id)))
                AND NOT EXISTS (SELECT 1 FROM jobs o
                                 WHERE o.account_key = jobs.account_key AND o.state = 'dispatched'
                                   AND o.id <> jobs.id AND o.lease_expires_ms + $3 >= $2)))
     ORDER BY created_ms, id
     LIMIT $6
       FOR UPDATE SKIP LOCKED
), lapsed AS (
    SELECT id, created_ms, attempts FROM jobs
     WHERE domain = $1 AND state = 'dispatched' AND created_ms >= $4 AND kind <> 'reconcile_batch'
       AND lease_expires_ms + $3 < $2
       AND (attempts >= $5
            OR (NOT EXISTS (SELECT 1 FROM jobs o
                             WHERE o.account_key = jobs.account_key AND o.state IN ('queued', 'dispatched')
                               AND o.id <> jobs.id
                               AND (o.created_ms < jobs.created_ms
                                    OR (o.created_ms = jobs.created_ms AND o.id < jobs.id)))
                AND NOT EXISTS (SELECT 1 FROM jobs o
                                 WHERE o.account_key = jobs.account_key AND o.state = 'dispatched'
                                   AND o.id <> jobs.id AND o.lease_expires_ms + $3 >= $2)))
     ORDER BY created_ms, id
     LIMIT $6
       FOR UPDATE SKIP LOCKED
)
SELECT id, created_ms, attempts FROM queued
UNION ALL
SELECT id, created_ms, attempts FROM lapsed
