"""Bindings: the only doors to external state (d1, and later r2, ai, media)."""
