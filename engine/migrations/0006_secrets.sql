-- A run remembers the names of the secrets it asked for (a JSON list); the values stay in files
-- under the home's secrets/ and never reach the database.
ALTER TABLE agent_runs ADD COLUMN secrets TEXT NOT NULL DEFAULT '[]';
