-- A client's job with its returned secret, locked until it is handed out.
SELECT kind, state, result_secret_encoding, result_secret, secret_retrieved_ms
  FROM jobs WHERE id = $1 AND client = $2 FOR UPDATE
