-- Warm starts: a pooled device (a started sandbox kept ready for a run without a target) names its
-- pool, the image and resource shape it was made for. NULL for every other device. A pooled device
-- with no run_id is ready; a run claims one by setting run_id (see engine/pool.py).
-- Numbered 13, not 12: 0012 is taken by another branch (run usage), merged separately.
ALTER TABLE devices ADD COLUMN pool TEXT;
CREATE INDEX devices_pooled ON devices (pool) WHERE pool IS NOT NULL AND deleted_at IS NULL;
