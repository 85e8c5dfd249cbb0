"""Approvals: a person's yes or no to a session's risky action."""
