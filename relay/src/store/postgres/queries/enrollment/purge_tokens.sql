-- Deletes tokens that were used or expired before $1.
DELETE FROM enrollment_tokens WHERE coalesce(used_ms, expires_ms) < $1
