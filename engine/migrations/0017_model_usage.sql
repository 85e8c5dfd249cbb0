-- What a run asked of model providers through the gateway: requests forwarded, and the tokens the
-- providers' answers reported (input and output, as their usage fields give them).
ALTER TABLE agent_runs ADD COLUMN model_requests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agent_runs ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agent_runs ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
