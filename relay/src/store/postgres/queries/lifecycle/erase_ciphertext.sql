-- Erases the link ciphertext of a request (kept in its job's result_secret).
UPDATE jobs SET result_secret = NULL
 WHERE id = (SELECT job_id FROM lifecycle_requests WHERE task_processing_result_id = $1)
