"""Renderers: data in, text or HTML out."""
