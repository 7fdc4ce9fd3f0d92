-- Counts a request for link $1 at $2 in a window of $3 ms that starts with the first request
-- after the previous window ended; shared by every replica. No row: no such link.
UPDATE lifecycle_requests SET
       link_window_ms = CASE WHEN link_window_ms IS NULL OR link_window_ms + $3 <= $2 THEN $2 ELSE link_window_ms END,
       link_requests = CASE WHEN link_window_ms IS NULL OR link_window_ms + $3 <= $2 THEN 1 ELSE link_requests + 1 END
 WHERE link_id = $1
RETURNING link_window_ms, link_requests
