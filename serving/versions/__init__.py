"""Model versions in the Triton repository: list, promote, roll back, delete.

``python -m serving.versions`` is the command line; :mod:`contracts.repository` the logic.
"""
