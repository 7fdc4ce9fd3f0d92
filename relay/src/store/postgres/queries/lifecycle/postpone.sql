-- Tries again at $2, noting why ($3). $4 is now.
UPDATE lifecycle_requests SET next_attempt_ms = $2, outcome_reason = $3, updated_ms = $4,
       claimed_until_ms = NULL
 WHERE task_processing_result_id = $1
