-- Delivery progress. $4 is now.
UPDATE lifecycle_requests SET delivery = $2, delivery_detail = $3, updated_ms = $4
 WHERE task_processing_result_id = $1
