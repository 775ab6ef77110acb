"""Networks, built by name: ``models.create("compact_cnn", num_classes=7)``."""

from models.registry import ModelSpec, create, create_classifier, get_spec, list_models, register

__all__ = ["ModelSpec", "create", "create_classifier", "get_spec", "list_models", "register"]
