-- Requests the worker should look at now ($1): due ones in resolving/resuming, applying ones whose
-- job is final, and delivering ones when $2 (after a restart); at most $3.
SELECT l.task_processing_result_id, l.tenant_id, l.workflow_id, l.task_id, l.subject_id,
       l.display_name, l.stage, l.job_id, j.state, l.delivery, l.delivery_detail, l.outcome, l.outcome_reason,
       l.resume_attempts, l.link_expires_ms, l.link_claimed_ms, l.link_views, l.created_ms, l.next_attempt_ms
  FROM lifecycle_requests l LEFT JOIN jobs j ON j.id = l.job_id
 WHERE (l.stage IN ('resolving', 'resuming') AND l.next_attempt_ms <= $1)
    OR (l.stage = 'applying' AND j.state IN ('succeeded', 'failed'))
    OR (l.stage = 'delivering' AND $2)
 ORDER BY l.created_ms
 LIMIT $3
