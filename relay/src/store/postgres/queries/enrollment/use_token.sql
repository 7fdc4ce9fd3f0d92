-- Uses a token once: unused, unexpired at $3 and with the secret hash $2, in one statement, so
-- two enrollments with one token cannot both succeed.
UPDATE enrollment_tokens SET used_ms = $3, used_by = $4
 WHERE id = $1 AND secret_sha256 = $2 AND used_ms IS NULL AND expires_ms > $3
