"""Agent runtime profiles: what a run or device under one gets, and its limits."""
