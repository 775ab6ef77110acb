"""Model versions in the Triton repository: list, promote, roll back, delete.

``python -m serving.models`` is the command line; :mod:`serving.models.repository` the logic.
"""
