-- Every known agent, by name.
SELECT name, domains, version, cert_serial, cert_expires_ms, first_seen_ms, last_seen_ms, connected,
       replica, stream, peer, opened_ms, directories, jobs_in_flight, jobs_done, jobs_failed
  FROM agents ORDER BY name
