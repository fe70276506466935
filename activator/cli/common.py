"""What every verb shares: exit codes, the one error line, loading the config."""

from __future__ import annotations

import argparse
import os
import sys

from activator.config.secrets import read_token_file
from activator.config.settings import Settings, load_settings

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "admin_token", "fail", "load", "table"]

EXIT_CONFIG = 2
EXIT_FAILED = 1


def fail(message: str, code: int = EXIT_FAILED) -> int:
    """Print ``dormant: message`` on stderr; return ``code``."""
    print(f"dormant: {message}", file=sys.stderr)
    return code


def load(args: argparse.Namespace) -> Settings:
    """The settings the verb's -c/--listen/--state-dir options (where it has them) ask for."""
    return load_settings(
        getattr(args, "config", None),
        listen=getattr(args, "listen", None),
        state_dir=getattr(args, "state_dir", None),
    )


def table(rows: list[list[str]]) -> str:
    """Rows as left-aligned columns, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def admin_token(args: argparse.Namespace) -> str:
    """The admin token to send: --token-file's content, else $DORMANT_ADMIN_TOKEN."""
    if args.token_file:
        return read_token_file(args.token_file, "--token-file")
    return os.environ.get("DORMANT_ADMIN_TOKEN", "")
