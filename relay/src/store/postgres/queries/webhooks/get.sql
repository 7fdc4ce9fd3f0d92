-- A client's webhook.
SELECT url, events, secret FROM webhooks WHERE client = $1
