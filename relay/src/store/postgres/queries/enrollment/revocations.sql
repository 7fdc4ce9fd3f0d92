SELECT agent, revoked_ms FROM agent_revocations
