"""Fuzz harnesses: ``python -m fuzz.decode`` (the upload decoding path)."""
