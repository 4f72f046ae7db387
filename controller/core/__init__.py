"""Decisions, pure: time is a parameter; table-tested."""
