-- Counts a view of the link $1 and returns what its page shows.
UPDATE lifecycle_requests l SET link_views = l.link_views + 1
  FROM lifecycle_requests r LEFT JOIN jobs j ON j.id = r.job_id
 WHERE l.link_id = $1 AND r.task_processing_result_id = l.task_processing_result_id
RETURNING l.link_expires_ms, l.link_claimed_ms, j.result_secret IS NOT NULL, j.must_change
