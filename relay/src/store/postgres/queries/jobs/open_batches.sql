-- The batches not final yet (jobs_open_batches), which the sweep settles.
SELECT id FROM jobs WHERE kind = 'reconcile_batch' AND state IN ('queued', 'dispatched')
