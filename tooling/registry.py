"""Module registry: module ids → classes, found by scanning ``tooling/modules/``.

Adding a module is adding one file there that defines a :class:`~tooling.modules.base.Module`
subclass with an ``id``; files whose names start with ``_`` and ``base`` are helpers. The manifest
compiler imports :func:`known_actions` and :func:`module_config_schema` lazily to validate manifests.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from functools import cache
from typing import Any

from digitorn_site.errors import NotFoundError
from tooling import modules as package
from tooling.modules.base import ActionSpec, Module

# Tools an agent may call besides module.action: discovery (tooling.meta) and background tasks
# (tooling.background). Named here so the manifest compiler can accept them without importing either.
DISCOVERY_META_TOOL_NAMES = (
    "search_tools", "get_tool", "execute_tool", "run_parallel", "list_categories", "browse_category",
)
BACKGROUND_META_TOOL_NAMES = ("background_run", "background_status", "background_cancel")
META_TOOL_NAMES = DISCOVERY_META_TOOL_NAMES + BACKGROUND_META_TOOL_NAMES
# Module ids of the original Digitorn that name one of ours: a manifest declaring or granting
# ``bash`` gets the shell module (under the id it wrote, so its config and rules apply as written).
MODULE_ALIASES = {"bash": "shell"}


@cache
def all_modules() -> dict[str, type[Module]]:
    found: dict[str, type[Module]] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        mod = importlib.import_module(f"{package.__name__}.{info.name}")
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if issubclass(obj, Module) and obj is not Module and obj.id and obj.__module__ == mod.__name__:
                if obj.id in found:
                    raise RuntimeError(f"two tool modules claim the id '{obj.id}'")
                found[obj.id] = obj
    for alias, target in MODULE_ALIASES.items():
        if target in found and alias not in found:
            found[alias] = found[target]
    return dict(sorted(found.items()))


def canonical_module_id(module_id: str) -> str:
    """``bash`` → ``shell``; other ids unchanged."""
    return MODULE_ALIASES.get(module_id, module_id)


def virtual_parent(module_id: str) -> type[Module] | None:
    """The module that provides ``module_id`` as a virtual module (``mcp_notes`` → mcp), if any."""
    for cls in all_modules().values():
        prefix = getattr(cls, "virtual_prefix", "")
        if prefix and module_id.startswith(prefix) and len(module_id) > len(prefix):
            return cls
    return None


def virtual_module_ids(app_modules: dict[str, Any]) -> dict[str, str]:
    """Virtual module id → parent module id for an app's module configs; no I/O (for the compiler)."""
    out: dict[str, str] = {}
    for module_id, config in (app_modules or {}).items():
        hook = getattr(all_modules().get(module_id), "virtual_module_ids", None)
        if hook is not None and isinstance(config or {}, dict):
            out.update({vid: module_id for vid in hook(config or {})})
    return out


def virtual_modules(app_id: str, app_modules: dict[str, Any]) -> dict[str, tuple[str, dict[str, ActionSpec]]]:
    """Virtual module id → (description, actions) for an app: MCP servers' tools. May connect."""
    out: dict[str, tuple[str, dict[str, ActionSpec]]] = {}
    for module_id, config in (app_modules or {}).items():
        hook = getattr(all_modules().get(module_id), "virtual_modules", None)
        if hook is not None:
            out.update(hook(app_id, dict(config or {})))
    return out


def get_module(module_id: str) -> type[Module]:
    modules = all_modules()
    try:
        return modules[module_id]
    except KeyError:
        parent = virtual_parent(module_id)
        if parent is not None:
            return parent.virtual_class(module_id)  # type: ignore[attr-defined]
        raise NotFoundError(f"Unknown tool module '{module_id}'; known modules: {', '.join(modules)}.")


def known_actions() -> dict[str, list[str]]:
    return {module_id: list(cls.actions) for module_id, cls in all_modules().items()}


def module_config_schema(module_id: str) -> dict[str, Any]:
    return get_module(module_id).config_schema


def action_spec(module_id: str, action: str) -> ActionSpec:
    cls = get_module(module_id)
    try:
        return cls.actions[action]
    except KeyError:
        raise NotFoundError(
            f"Module '{module_id}' has no action '{action}'; actions: {', '.join(cls.actions)}."
        )
