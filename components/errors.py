"""Errors shared across layers (a neutral module: it imports nothing of the project)."""

from __future__ import annotations


class ConfigError(ValueError):
    """params.yaml (or a saved model config) is missing, unreadable or invalid; the message names each bad key."""


class OptionError(ValueError):
    """A command-line option is invalid for what it applies to (e.g. more sampler steps than the model's schedule);
    the message names the option and the allowed values. The CLI exits with 2, as for any bad option."""
