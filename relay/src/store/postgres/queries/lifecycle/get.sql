-- One request.
SELECT l.task_processing_result_id, l.tenant_id, l.workflow_id, l.task_id, l.subject_id,
       l.display_name, l.stage, l.job_id, j.state, l.delivery, l.delivery_detail, l.outcome, l.outcome_reason,
       l.resume_attempts, l.link_expires_ms, l.link_claimed_ms, l.link_views, l.created_ms, l.next_attempt_ms,
       CASE WHEN l.stage = 'delivering' THEN l.key_replica ELSE j.finished_by END, l.reissues
  FROM lifecycle_requests l LEFT JOIN jobs j ON j.id = l.job_id
 WHERE l.task_processing_result_id = $1
