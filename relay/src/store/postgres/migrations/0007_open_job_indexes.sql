-- The indexes of open jobs (SQLite's version 14). The claim order and the accounts are searched
-- for queued and dispatched jobs only, so their indexes hold only those: a job that becomes final
-- is not entered into them again, and they stay the size of the backlog, not of every job kept.
-- The leases are found by holder (a revocation) among dispatched jobs only, by a range of the
-- holder in byte order ("C"), whatever the database's collation.
DROP INDEX jobs_claim_order;
CREATE INDEX jobs_claim_order ON jobs (domain, state, created_ms, id) WHERE state IN ('queued', 'dispatched');
DROP INDEX jobs_account;
CREATE INDEX jobs_account ON jobs (account_key, state, created_ms) WHERE state IN ('queued', 'dispatched');
DROP INDEX jobs_lease_holder;
CREATE INDEX jobs_leased ON jobs ((lease_holder COLLATE "C")) WHERE state = 'dispatched';
