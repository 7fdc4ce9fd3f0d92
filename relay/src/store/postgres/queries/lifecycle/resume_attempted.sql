-- A resume call: stage $2 (done, resuming again at $3, or resume_failed), noting $4. $5 is now.
UPDATE lifecycle_requests SET stage = $2, next_attempt_ms = $3, resume_attempts = resume_attempts + 1,
       delivery_detail = CASE WHEN $4::text IS NULL THEN delivery_detail
                              ELSE coalesce(delivery_detail || '; ', '') || 'resume: ' || $4::text END,
       updated_ms = $5, claimed_until_ms = NULL
 WHERE task_processing_result_id = $1 AND stage = 'resuming'
