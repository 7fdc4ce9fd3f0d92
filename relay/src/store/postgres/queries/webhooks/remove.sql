-- Removes a client's webhook.
DELETE FROM webhooks WHERE client = $1
