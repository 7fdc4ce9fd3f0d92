-- The attempts of the deliveries $1.
SELECT delivery_id, attempt, at_ms, duration_ms, status, error FROM webhook_attempts
 WHERE delivery_id = ANY($1) ORDER BY delivery_id, attempt
