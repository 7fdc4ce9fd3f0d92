-- Denies the agent's certificates issued before $2 (a later revocation moves the time on).
INSERT INTO agent_revocations (agent, revoked_ms) VALUES ($1, $2)
ON CONFLICT (agent) DO UPDATE SET revoked_ms = greatest(agent_revocations.revoked_ms, excluded.revoked_ms)
