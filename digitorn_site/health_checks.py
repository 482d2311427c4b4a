"""Extra health facts other parts register (e.g. Celery worker liveness)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_checks: list[Callable[[], dict[str, Any]]] = []


def register(check: Callable[[], dict[str, Any]]) -> None:
    _checks.append(check)


def extra() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for check in _checks:
        try:
            out.update(check())
        except Exception as exc:  # noqa: BLE001 - a failing probe is reported, not raised
            out[getattr(check, "__name__", "check")] = {"ok": False, "error": str(exc)}
    return out
