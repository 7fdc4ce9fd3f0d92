-- Extends to $4 the leases of the jobs $1 under the attempts $2, each only while dispatched to the
-- holder $3 under that attempt (a lapsed lease included, as long as nobody took it over).
UPDATE jobs SET lease_expires_ms = $4
  FROM unnest($1::text[], $2::integer[]) AS running (id, attempt)
 WHERE jobs.id = running.id AND jobs.attempts = running.attempt
   AND jobs.state = 'dispatched' AND jobs.lease_holder = $3
RETURNING jobs.id, jobs.attempts
