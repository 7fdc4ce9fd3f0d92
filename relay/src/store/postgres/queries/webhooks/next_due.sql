-- When the earliest pending delivery is due.
SELECT min(next_attempt_ms) FROM webhook_deliveries WHERE state = 'pending'
