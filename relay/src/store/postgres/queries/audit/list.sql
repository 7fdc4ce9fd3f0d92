SELECT seq, at_ms, event_id, event, replica, client, agent, domain, job_id, address, details
  FROM audit_events
 WHERE seq > $1
   AND ($2::BIGINT IS NULL OR at_ms >= $2) AND ($3::BIGINT IS NULL OR at_ms < $3)
   AND ($4::BIGINT IS NULL OR event_id = $4) AND ($5::TEXT IS NULL OR client = $5)
   AND ($6::TEXT IS NULL OR agent = $6) AND ($7::TEXT IS NULL OR job_id = $7)
   AND ($8::TEXT[] IS NULL OR domain = ANY ($8))
   AND ($10::TEXT IS NULL OR event = $10)
 ORDER BY seq
 LIMIT $9
