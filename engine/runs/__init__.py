"""Runs: requests (create, get, list, events, wait, cancel, artifacts), and following one to its end."""
