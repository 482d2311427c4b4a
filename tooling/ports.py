"""Ports: what tooling needs from the layers above it, registered by them at start-up.

Dependencies point down (conversations → apps_registry → tooling → approvals), yet a background
task or an approved direct call must look its compiled app up by id, and ``agent_spawn`` must start
an agent delegation. Instead of importing upwards, tooling calls through these slots, which the
higher apps fill in their ``AppConfig.ready()``: ``apps_registry`` registers the app resolver,
``conversations`` the delegator. Both are always installed; an empty slot means Django was not set
up, which is a programming error and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from apps_registry.manifest.compiled import CompiledApp


class Delegator(Protocol):
    """What ``agent_spawn`` and ``run_parallel`` use of ``conversations.turns.delegation`` (see there)."""

    CURRENT: ContextVar[Any]
    DelegationCall: type
    DelegationError: type[Exception]

    def spawn(self, **kwargs: Any) -> dict[str, Any]: ...
    def task_get(self, **kwargs: Any) -> Any: ...
    def snapshot(self, turn: Any) -> dict[str, Any]: ...
    def cancel(self, turn: Any) -> dict[str, Any]: ...
    def tasks_list(self, **kwargs: Any) -> dict[str, Any]: ...
    def wait_outcome(self, wait: dict[str, Any]) -> dict[str, Any] | None: ...
    def request_wait(self, tasks: list[str], *, form: str, timeout: Any = None) -> dict[str, Any]: ...


AppResolver = Callable[..., "CompiledApp"]

_app_resolver: AppResolver | None = None
_delegator: Delegator | None = None


def set_app_resolver(resolver: AppResolver) -> None:
    """``resolver(app_id=...)`` → the deployed app's runtime CompiledApp (NotFoundError if none)."""
    global _app_resolver
    _app_resolver = resolver


def resolve_app(app_id: str) -> CompiledApp:
    if _app_resolver is None:
        raise RuntimeError("no app resolver registered: apps_registry's AppConfig.ready() has not run")
    return _app_resolver(app_id=app_id)


def set_delegator(delegator: Delegator) -> None:
    global _delegator
    _delegator = delegator


def delegator() -> Delegator:
    if _delegator is None:
        raise RuntimeError("no delegator registered: conversations' AppConfig.ready() has not run")
    return _delegator
