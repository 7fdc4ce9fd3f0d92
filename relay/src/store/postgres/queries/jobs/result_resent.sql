-- The final result of job $1 arrived again at replica $2, which now holds its link key too: it
-- takes the result over while the job's new-hire request (if any) has not opened its link yet.
UPDATE jobs SET finished_by = $2
 WHERE id = $1 AND state = 'succeeded'
   AND NOT EXISTS (SELECT 1 FROM lifecycle_requests l WHERE l.job_id = $1 AND l.stage <> 'applying')
