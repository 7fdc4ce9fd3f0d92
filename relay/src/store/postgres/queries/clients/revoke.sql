-- Removes a client (its webhook goes with it: ON DELETE CASCADE).
DELETE FROM api_clients WHERE name = $1
