"""Sessions: spawn, me, stop and its cascade, tokens, the TTL reaper."""
