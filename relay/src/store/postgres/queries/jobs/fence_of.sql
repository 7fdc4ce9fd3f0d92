-- Why a result changed nothing: the job's state, holder and attempt now.
SELECT state, lease_holder, attempts FROM jobs WHERE id = $1
