"""Serving: the FastAPI gateway, the Triton client and server tools, body-location rules.

Importing this package is cheap; submodules import their heavy dependencies themselves.
"""
