-- Deletes deliveries that ended before $1 (their attempts go with them: ON DELETE CASCADE).
DELETE FROM webhook_deliveries WHERE state IN ('delivered', 'failed') AND finished_ms < $1
