-- A new queued job.
INSERT INTO jobs (id, kind, domain, target_kind, target_value, must_change, unlock, client, state,
                  secret, created_ms, updated_ms, enforce_history, generate_length, generate_mode,
                  recipient_key, parent_id, account_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', $9, $10, $10, $11, $12, $13, $14, $15, $16)
