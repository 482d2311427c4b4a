"""The module framework: a module is a class whose methods are declared actions.

A module file under ``tooling/modules/`` defines one :class:`Module` subclass with an ``id``; its
actions are methods decorated with :func:`action`. The registry finds the class by scanning the
package, so adding a module is adding one file.

Actions receive validated params as keyword arguments and return JSON-serialisable data. A failure
the caller should read (a path outside the workspace, a missing file, a refused host) is a
:class:`ToolError` with a message that names the parameter; ``tool_invoke`` turns it into an
``error`` outcome instead of a 500.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

RISK_LEVELS = ("low", "medium", "high")
SIDE_EFFECTS = (
    "read_only",
    "filesystem_write",
    "filesystem_delete",
    "process_exec",
    "network_request",
    "external_api_call",
    "database_write",
    "state_mutation",
)


class ToolError(Exception):
    """An action failed in a way the caller can act on; the message is shown as the tool's error.

    ``data`` is whatever partial result is still worth returning (a command's output on timeout).
    """

    def __init__(self, message: str, *, data: Any = None):
        super().__init__(message)
        self.message = message
        self.data = data


@dataclass(frozen=True)
class ActionSpec:
    name: str
    description: str
    parameters: dict[str, Any]
    risk_level: str = "low"
    side_effects: tuple[str, ...] = ("read_only",)
    irreversible: bool = False
    aliases: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    method: str = ""  # the Module method that runs it
    # Other names a caller may give a parameter (the original Digitorn's ``file_path`` for
    # ``path``): alias → parameter. ``tooling.services.validate_params`` renames them first.
    param_aliases: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.risk_level not in RISK_LEVELS:
            raise ValueError(f"action {self.name}: risk_level must be one of {RISK_LEVELS}")
        unknown = [s for s in self.side_effects if s not in SIDE_EFFECTS]
        if unknown:
            raise ValueError(f"action {self.name}: unknown side effects {unknown}; use {SIDE_EFFECTS}")


@dataclass
class ToolContext:
    """Who runs the action and where; modules read nothing else from the outside world."""

    app_id: str
    principal: str = ""
    session_id: str | None = None
    agent_id: str | None = None
    cancel_check: Callable[[], bool] | None = None
    # Every module's config of the app, for modules that share settings (shell uses the
    # filesystem workspace when it has none of its own).
    app_modules: dict[str, dict[str, Any]] = field(default_factory=dict)

    def cancelled(self) -> bool:
        return bool(self.cancel_check and self.cancel_check())


def action(
    *,
    description: str,
    parameters: dict[str, Any] | None = None,
    risk_level: str = "low",
    side_effects: tuple[str, ...] = ("read_only",),
    irreversible: bool = False,
    aliases: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    name: str | None = None,
    param_aliases: dict[str, str] | None = None,
) -> Callable:
    """Declare a method as an action; the parameters schema is a JSON-schema object."""

    def decorate(fn: Callable) -> Callable:
        schema = parameters or {"type": "object", "properties": {}}
        schema = {"type": "object", "additionalProperties": False, **schema}
        fn._action_spec = ActionSpec(  # type: ignore[attr-defined]
            name=name or fn.__name__,
            description=description,
            parameters=schema,
            risk_level=risk_level,
            side_effects=tuple(side_effects),
            irreversible=irreversible,
            aliases=tuple(aliases),
            tags=tuple(tags),
            method=fn.__name__,
            param_aliases=tuple(sorted((param_aliases or {}).items())),
        )
        return fn

    return decorate


class Module:
    """Base class of every tool module.

    Subclasses set ``id``, ``description`` and ``config_schema`` (JSON schema of the per-app config
    under ``modules: {id: {...}}``) and decorate their actions.
    """

    id: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_schema: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    actions: ClassVar[dict[str, ActionSpec]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, ActionSpec] = {}
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                spec = getattr(attr, "_action_spec", None)
                if isinstance(spec, ActionSpec):
                    if spec.method in vars(Module):
                        raise TypeError(f"{cls.__name__}.{spec.method}: action methods may not shadow Module.{spec.method}")
                    found[spec.name] = spec
        cls.actions = found

    def __init__(self, *, config: dict[str, Any] | None, context: ToolContext):
        self.config = dict(config or {})
        self.context = context

    # Not named ``run``: that is a natural action name (shell.run) and would shadow the dispatcher.
    def invoke_action(self, action_name: str, params: dict[str, Any]) -> Any:
        spec = self.actions[action_name]
        return getattr(self, spec.method)(**params)
