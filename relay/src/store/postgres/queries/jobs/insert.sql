-- New queued jobs (a job, or a batch and then its children) in one statement, one row per element
-- of the arrays, in their order. $10 is now.
INSERT INTO jobs (id, kind, domain, target_kind, target_value, must_change, unlock, client, state,
                  secret, created_ms, updated_ms, enforce_history, generate_length, generate_mode,
                  recipient_key, parent_id, account_key)
SELECT j.id, j.kind, j.domain, j.target_kind, j.target_value, j.must_change, j.unlock, j.client, 'queued',
       j.secret, $10, $10, j.enforce_history, j.generate_length, j.generate_mode,
       j.recipient_key, j.parent_id, j.account_key
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::boolean[], $7::boolean[],
              $8::text[], $9::bytea[], $11::boolean[], $12::integer[], $13::text[], $14::bytea[], $15::text[],
              $16::text[])
       WITH ORDINALITY AS j (id, kind, domain, target_kind, target_value, must_change, unlock, client, secret,
                             enforce_history, generate_length, generate_mode, recipient_key, parent_id,
                             account_key, n)
 ORDER BY j.n
