"""Terminal output: rich tables on stdout, one-line messages and errors on stderr."""

from __future__ import annotations

import os
import sys

from rich.console import Console

# Piped output (tests, scripts) gets wide tables instead of rich's 80-column default.
_width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(highlight=False, soft_wrap=True, width=_width)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def info(message: str) -> None:
    """A status line for a person (stdout, plain text so it pipes well)."""
    print(message, flush=True)


def fail(message: str, code: int = 1) -> int:
    """Print ``error: message`` on stderr and return the exit code to use."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code
