-- A queued batch of $2 is dispatched once any child left the queue. $1 is now. Run after the
-- commit of the change to a child, like settle_final.sql.
UPDATE jobs SET state = 'dispatched', dispatched_ms = $1, updated_ms = $1
 WHERE id = ANY($2) AND kind = 'reconcile_batch' AND state = 'queued'
   AND EXISTS (SELECT 1 FROM jobs c
                WHERE c.parent_id = jobs.id AND c.state IN ('dispatched', 'succeeded', 'failed'))
