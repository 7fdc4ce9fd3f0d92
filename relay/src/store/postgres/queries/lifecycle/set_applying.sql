-- resolving → applying with the job $2 created for it. $3 is now.
UPDATE lifecycle_requests SET stage = 'applying', job_id = $2, updated_ms = $3, claimed_until_ms = NULL
 WHERE task_processing_result_id = $1 AND stage = 'resolving'
