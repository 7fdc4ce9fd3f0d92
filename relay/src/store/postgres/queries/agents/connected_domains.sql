-- The domains of agents whose stream is open and that were heard from at $1 or later.
SELECT name, domains FROM agents WHERE connected AND last_seen_ms >= $1
