-- When the earliest pending delivery is due (or, when another replica holds it, its claim expires).
SELECT min(greatest(next_attempt_ms, coalesce(claimed_until_ms, 0))) FROM webhook_deliveries WHERE state = 'pending'
