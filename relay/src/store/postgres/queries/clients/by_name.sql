-- The client named $1 (a status page session names its client).
SELECT name, scopes FROM api_clients WHERE name = $1
