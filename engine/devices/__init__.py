"""Devices (sandboxes and computers) and the pool of warm sandboxes."""
