-- Request $1, locked, when replica $2 may re-issue it (see reissue.sql).
SELECT 1 FROM lifecycle_requests
 WHERE task_processing_result_id = $1 AND reissues = 0 AND stage IN ('applying', 'delivering')
   AND claimed_by = $2
   FOR UPDATE
