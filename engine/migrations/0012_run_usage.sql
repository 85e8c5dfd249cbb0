-- What a run's own cgroups measured of it when it ended (in a long-lived device, where the host
-- can see them): the most processes and the most memory it had at once. NULL where not measured.
ALTER TABLE agent_runs ADD COLUMN pids_peak INTEGER;
ALTER TABLE agent_runs ADD COLUMN memory_peak_bytes INTEGER;
