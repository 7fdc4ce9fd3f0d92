-- Stores a callout once per task processing result; nothing when it was stored before.
INSERT INTO lifecycle_requests (task_processing_result_id, tenant_id, workflow_id, task_id, subject_id,
    display_name, workflow_name, body_sha256, stage, created_ms, updated_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'resolving', $9, $9)
ON CONFLICT (task_processing_result_id) DO NOTHING
