"""Quotas: what a tree of sessions or a workspace may hold (messages, tasks, devices)."""
