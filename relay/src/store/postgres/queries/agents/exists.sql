-- Whether agent $1 is known.
SELECT 1 FROM agents WHERE name = $1
