"""The one error a bad configuration raises, wherever it comes from (the YAML file, a
policy's spec, a command-line option, a token file)."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key path and the problem."""
