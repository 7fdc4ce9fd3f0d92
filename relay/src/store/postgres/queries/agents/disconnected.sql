-- Stream $2 of agent $1 ended: not connected unless a newer stream was recorded since; the
-- counters grow by $3/$4 either way. Returns whether $2 was the agent's current stream.
UPDATE agents SET connected = CASE WHEN stream = $2 THEN FALSE ELSE connected END,
                  jobs_done = jobs_done + $3, jobs_failed = jobs_failed + $4
 WHERE name = $1
RETURNING stream = $2
