-- Replaces a client's scopes (JSON; they hold from its next request on).
UPDATE api_clients SET scopes = $2 WHERE name = $1
