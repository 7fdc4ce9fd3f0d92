-- A batch of $2 is final once every child is: succeeded, or failed with partial_failure. $1 is now.
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
