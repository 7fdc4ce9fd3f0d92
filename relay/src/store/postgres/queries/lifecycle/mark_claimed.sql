-- The link was claimed at $2.
UPDATE lifecycle_requests SET link_claimed_ms = $2, updated_ms = $2 WHERE task_processing_result_id = $1
