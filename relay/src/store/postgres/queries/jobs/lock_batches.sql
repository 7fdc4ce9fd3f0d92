-- Locks the unsettled batches $1 (in id order, so concurrent settles cannot deadlock): a settle
-- after it sees every child change committed before it.
SELECT id FROM jobs WHERE id = ANY($1) AND state IN ('queued', 'dispatched') ORDER BY id FOR UPDATE
