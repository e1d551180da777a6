"""Core's own benchmark rows (``<name>_bench.py`` files, found like the integrations' ones)."""
