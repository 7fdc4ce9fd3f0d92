-- Ends the revoked agent's leases now (holders are "<agent>#<instance>"); each job is claimable
-- once the write timeout has passed too, as for any agent that went away mid-write. The holders
-- from "<agent>#" to "<agent>$" ('$' follows '#') in byte order are a range of jobs_leased.
UPDATE jobs SET lease_expires_ms = least(lease_expires_ms, $2), updated_ms = $2
 WHERE state = 'dispatched'
   AND (lease_holder COLLATE "C") >= $1::text || '#' AND (lease_holder COLLATE "C") < $1::text || '$'
