-- Claims for replica $2 until $3 up to $4 requests the worker should look at now ($1) that no
-- replica holds: due ones in resolving/resuming; applying ones whose job failed, or succeeded with
-- its result recorded by $2 or by a replica that is not alive ($5: the oldest heartbeat of a live
-- one); delivering ones whose sending replica is not alive. SKIP LOCKED: replicas claiming at once
-- take different rows.
WITH claimed AS (
    UPDATE lifecycle_requests SET claimed_by = $2, claimed_until_ms = $3
     WHERE task_processing_result_id IN (
         SELECT l.task_processing_result_id FROM lifecycle_requests l LEFT JOIN jobs j ON j.id = l.job_id
          WHERE (l.claimed_until_ms IS NULL OR l.claimed_until_ms <= $1)
            AND ((l.stage IN ('resolving', 'resuming') AND l.next_attempt_ms <= $1)
              OR (l.stage = 'applying' AND j.state = 'failed')
              OR (l.stage = 'applying' AND j.state = 'succeeded'
                  AND (j.finished_by = $2 OR NOT EXISTS (
                      SELECT 1 FROM replicas r WHERE r.id = j.finished_by AND r.heartbeat_ms > $5)))
              OR (l.stage = 'delivering' AND NOT EXISTS (
                      SELECT 1 FROM replicas r WHERE r.id = l.key_replica AND r.heartbeat_ms > $5)))
          ORDER BY l.created_ms
          LIMIT $4
            FOR UPDATE OF l SKIP LOCKED)
    RETURNING task_processing_result_id
)
SELECT l.task_processing_result_id, l.tenant_id, l.workflow_id, l.task_id, l.subject_id,
       l.display_name, l.stage, l.job_id, j.state, l.delivery, l.delivery_detail, l.outcome, l.outcome_reason,
       l.resume_attempts, l.link_expires_ms, l.link_claimed_ms, l.link_views, l.created_ms, l.next_attempt_ms,
       CASE WHEN l.stage = 'delivering' THEN l.key_replica ELSE j.finished_by END, l.reissues
  FROM claimed c JOIN lifecycle_requests l ON l.task_processing_result_id = c.task_processing_result_id
  LEFT JOIN jobs j ON j.id = l.job_id
 ORDER BY l.created_ms
