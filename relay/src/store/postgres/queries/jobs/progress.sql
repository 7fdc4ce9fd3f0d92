-- How many children of a batch are in each state.
SELECT state, count(*) FROM jobs WHERE parent_id = $1 GROUP BY state
