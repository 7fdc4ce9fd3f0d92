-- The client whose token hashes to $1.
SELECT name, scopes FROM api_clients WHERE token_sha256 = $1
