-- Erases a returned secret once it was handed out.
UPDATE jobs SET result_secret = NULL, secret_retrieved_ms = $2, updated_ms = $2 WHERE id = $1
