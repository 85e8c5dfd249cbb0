"""Scripted model providers the real agent CLIs talk to in tests."""
