-- The state of a client's job, locked until the cancel decides.
SELECT state, parent_id FROM jobs WHERE id = $1 AND client = $2 FOR UPDATE
