-- The body hash a task processing result was first stored with.
SELECT body_sha256 FROM lifecycle_requests WHERE task_processing_result_id = $1
