-- A batch of $2 is final once every child is: succeeded, or failed with partial_failure. $1 is now.
-- Run after the commit of each change to a child, as a statement of its own, never under a lock
-- of the batch: of the settles that follow concurrent child changes, the one whose snapshot is
-- taken last sees every one of those commits, so the last child to become final always settles
-- its batch. A child that is final stays final, so a batch is never settled early. The state
-- condition makes it final once: a concurrent settle waits for the row, then finds it final.
UPDATE jobs SET
       state = CASE WHEN EXISTS (SELECT 1 FROM jobs c WHERE c.parent_id = jobs.id AND c.state = 'failed')
                    THEN 'failed' ELSE 'succeeded' END,
       error_code = CASE WHEN EXISTS (SELECT 1 FROM jobs c WHERE c.parent_id = jobs.id AND c.state = 'failed')
                         THEN 'partial_failure' END,
       error_message = CASE WHEN EXISTS (SELECT 1 FROM jobs c WHERE c.parent_id = jobs.id AND c.state = 'failed')
                            THEN (SELECT count(*) FROM jobs c WHERE c.parent_id = jobs.id AND c.state = 'failed')
                                 || ' of ' || (SELECT count(*) FROM jobs c WHERE c.parent_id = jobs.id)
                                 || ' accounts failed, see the jobs with this parent_id' END,
       finished_ms = $1, updated_ms = $1
 WHERE id = ANY($2) AND kind = 'reconcile_batch' AND state IN ('queued', 'dispatched')
   AND NOT EXISTS (SELECT 1 FROM jobs c WHERE c.parent_id = jobs.id AND c.state IN ('queued', 'dispatched'))
