-- The claimable jobs in claim order (SQLite's version 13): a claim walks the queued and the lapsed
-- jobs of a domain by (created_ms, id) and stops at its limit. It replaces jobs_claimable, which
-- lacked the id, so that jobs accepted in the same millisecond (every child of a reconciliation)
-- had to be sorted first, all of them.
CREATE INDEX jobs_claim_order ON jobs (domain, state, created_ms, id);
DROP INDEX jobs_claimable;

-- The open batches, which the sweep settles (a batch settles after the commit of each change to
-- a child, outside that transaction, so a relay that stops in between leaves it to the sweep).
CREATE INDEX jobs_open_batches ON jobs (id) WHERE kind = 'reconcile_batch' AND state IN ('queued', 'dispatched');
