"""The task queue: tasks, leases (claim, heartbeat, complete, fail, release) and task runs."""
