-- Ends the revoked agent's leases now (holders are "<agent>#<instance>"); each job is claimable
-- once the write timeout has passed too, as for any agent that went away mid-write.
UPDATE jobs SET lease_expires_ms = least(lease_expires_ms, $2), updated_ms = $2
 WHERE state = 'dispatched' AND substr(lease_holder, 1, length($1::text) + 1) = $1::text || '#'
