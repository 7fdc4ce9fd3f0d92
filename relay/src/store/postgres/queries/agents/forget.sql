-- Removes agent $1; when $2 is not NULL, only if it is not connected or was last heard before $2.
DELETE FROM agents WHERE name = $1 AND ($2::bigint IS NULL OR NOT connected OR last_seen_ms < $2)
