"""Groups of runs: entries fanned out under a concurrency limit, one replayable event stream."""
