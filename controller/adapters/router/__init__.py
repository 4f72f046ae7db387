"""Routers: the embedded router and HAProxy."""
