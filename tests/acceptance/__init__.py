"""Acceptance tests: the README's journeys, run as a user runs them (the installed
``mdc`` console script, in a fresh directory, with the flags the README shows)."""
