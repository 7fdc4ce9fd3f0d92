-- The outcome is known ($2: completed or failed, why $3): → resuming. $4 is now.
UPDATE lifecycle_requests SET stage = 'resuming', outcome = $2, outcome_reason = $3,
       next_attempt_ms = 0, updated_ms = $4, claimed_until_ms = NULL
 WHERE task_processing_result_id = $1 AND stage IN ('resolving', 'applying', 'delivering')
