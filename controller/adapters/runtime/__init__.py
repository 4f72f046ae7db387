"""Runtimes: local processes and a Ray cluster."""
