"""Channels between sessions: send, recv with wait, reply; family and named channels."""
