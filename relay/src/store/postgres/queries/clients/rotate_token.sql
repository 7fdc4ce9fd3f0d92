-- Replaces a client's token hash.
UPDATE api_clients SET token_sha256 = $2 WHERE name = $1
