-- The sizes of a device's /workspace and /tmp in MiB, as it was made (a device kind's setting, its
-- profile's, or its own ask). Devices made before have none recorded: the daemon's settings sized them.
ALTER TABLE devices ADD COLUMN workspace_mb INTEGER;
ALTER TABLE devices ADD COLUMN tmp_mb INTEGER;
