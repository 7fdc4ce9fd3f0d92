-- Placeholder for the known-agents table (SQLite version 8), which its own change fills in; it keeps
-- the version numbers of both backends in step until then.
SELECT 1;
