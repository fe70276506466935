"""Reading secrets from files: the one reader of every token file Dormant takes (the admin
and metrics tokens, the exec control token, the operator's admin token, a notebook's
Jupyter token)."""

from __future__ import annotations

from pathlib import Path

from activator.config.errors import ConfigError

__all__ = ["read_token_file"]


def read_token_file(path: str | Path, what: str, empty_hint: str = "") -> str:
    """The token in the file at ``path`` (``~`` expanded, whitespace around it removed).

    ConfigError naming ``what`` (the config key or option that named the file) when the
    file cannot be read or is empty: a token file left empty must never leave a route
    open. ``empty_hint`` is added to the empty-file message (what to do about it)."""
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {str(path)!r} ({exc.strerror or exc})") from exc
    if not token:
        hint = f"; {empty_hint}" if empty_hint else ""
        raise ConfigError(f"{what}: {str(path)!r} is empty{hint}")
    return token
