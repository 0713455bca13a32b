"""Errors shared across layers (a neutral module: it imports nothing of the project)."""

from __future__ import annotations


class ConfigError(ValueError):
    """params.yaml (or a saved model config) is missing, unreadable or invalid; the message names each bad key."""
