DELETE FROM audit_events WHERE at_ms < $1
