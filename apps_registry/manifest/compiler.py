"""The manifest compiler: YAML text -> :class:`CompiledApp`, or one :class:`ManifestError` listing
every problem found.

Pipeline: parse (``loader``) -> alias pass, the original's legacy forms folded into the canonical
blocks (``legacy``) -> interpolation of ``{{env.X}}`` / ``{{secret.X}}`` / ``{{sys.*}}`` / bundle
files (``interpolation``) -> validation and build (``validation``). Interpolation runs before the type checks so that ``timeout: "{{env.T ?? '30'}}"``
is checked as the number it resolves to; its errors carry paths like every other error.

Secrets: ``{{secret.KEY}}`` markers are kept in the compiled app in every case (they are never
substituted here, even when ``secrets`` or the environment holds the value), so the stored
``CompiledApp.to_dict()`` never contains a secret in plain text. ``KEY`` is listed in
``secret_refs``; when neither ``secrets`` nor ``environ`` has it, it is also listed in
``missing_secrets`` -- not an error: the app deploys and the caller reports what to set before it
runs. Callers resolve markers in memory with ``CompiledApp.with_secrets(values)``, taking values
from the app's secret store first and from the environment variable of the same name second.

The compiler is pure: no ORM, no I/O besides reading ``environ``; the tool catalog comes from
``tooling.registry`` (imported lazily so that importing this module never drags in the tooling app).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from digitorn_site.errors import ManifestError

from . import environment
from .compiled import CompiledApp
from .interpolation import interpolate, restore_env_markers
from .legacy import fold
from .loader import load
from .problems import Path, PathMap, Problems, format_path
from .validation import build_app

SCHEMA_VERSION = 2
MAX_REPORTED_ERRORS = 200


@dataclass(frozen=True)
class CompileResult:
    app: CompiledApp
    raw_yaml: str  # the manifest text as compiled (UTF-8 decoded, BOM dropped)
    yaml_hash: str  # sha256 hex of raw_yaml encoded as UTF-8
    missing_secrets: tuple[str, ...]  # referenced secrets found neither in `secrets` nor in `environ`
    warnings: tuple[str, ...]  # "path: message", things that compile but are probably not meant


def compile_manifest(
    text: str | bytes,
    *,
    secrets: dict[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    files: Callable[[str], str | None] | None = None,
) -> CompileResult:
    """Compile a manifest; raises ``ManifestError`` whose ``errors`` are ``{"path", "message"}`` items
    (plus ``line``/``column`` where the file position is known), in the order they were found.

    ``environ``: the variables ``{{env.X}}`` may read (default: the process environment minus what
    ``environment.refusal`` refuses: the daemon's own credentials, names outside
    ``DIGITORN_MANIFEST_ENV``). ``files``: relative path -> text of the files beside the manifest
    (``{{prompt.X}}``, ``{{asset.X}}``, ...), or None.
    """
    from tooling import registry

    loaded = load(text)
    process_env = os.environ
    environ = environment.readable(process_env) if environ is None else environ
    secrets = secrets or {}
    problems = Problems()

    canonical, paths = fold(loaded.data, problems)
    if canonical is None:
        raise ManifestError(_render(problems.errors, paths, loaded.locations))
    canonical = _canonical_module_ids(canonical, registry.MODULE_ALIASES, paths)
    interpolated = interpolate(
        canonical,
        environ=environ,
        problems=problems,
        env_refusal=lambda name: environment.refusal(name, process_env),
        files=files,
    )
    app = build_app(
        interpolated.tree,
        problems=problems,
        templates=interpolated.templates,
        secret_refs=interpolated.secret_refs,
        catalog=_catalog(registry, interpolated.tree),
        config_schema=registry.module_config_schema,
        meta_tools=registry.META_TOOL_NAMES,
        env_refs=interpolated.env_refs,
    )
    _drop_errors_inside_lacking_modules(problems, interpolated.tree, registry.known_actions())
    if problems or app is None:
        raise ManifestError(_render(problems.errors, paths, loaded.locations))

    missing = tuple(key for key in app.secret_refs if key not in secrets and key not in environ)
    warnings = tuple(
        f"{shown}: {message}" if (shown := format_path(paths.to_original(path))) else message
        for path, message in _unique(problems.warnings)
    )
    # The stored form keeps {{env.X}} markers in text values: environment values are resolved in
    # memory when the app runs, like secrets (and masked in outputs).
    stored = restore_env_markers(app.to_dict(), interpolated.env_marked)
    stored["warnings"] = list(warnings)
    app = CompiledApp.from_dict(stored)
    return CompileResult(
        app=app,
        raw_yaml=loaded.text,
        yaml_hash=hashlib.sha256(loaded.text.encode("utf-8")).hexdigest(),
        missing_secrets=missing,
        warnings=warnings,
    )


def _canonical_module_ids(tree: dict[str, Any], aliases: Mapping[str, str], paths: PathMap) -> dict[str, Any]:
    """The original's other names of a module (``bash`` for ``shell``) replaced by this build's, so
    one module has one id everywhere: declarations, agents' module lists, capability rules, tool
    names in scalar grants. A manifest declaring both names keeps the one it wrote canonically."""

    def name(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        module, dot, action = value.partition(".")
        return f"{aliases.get(module, module)}{dot}{action}" if module in aliases else value

    tools = tree.get("tools")
    if not isinstance(tools, dict):
        tools = {}
    modules = tools.get("modules")
    if isinstance(modules, dict) and any(k in aliases for k in modules):
        renamed: dict[str, Any] = {}
        for key, block in modules.items():
            target = aliases.get(key, key)
            if target != key and target in modules:
                renamed[key] = block  # both spellings declared: left as written (validation reports it)
                continue
            if target != key:
                paths.add(("tools", "modules", target), paths.to_original(("tools", "modules", key)))
            renamed[target] = block
        tools = {**tools, "modules": renamed}
    caps = tools.get("capabilities")
    if isinstance(caps, dict):
        caps = dict(caps)
        for key in ("grant", "approve", "deny", "hidden_actions"):
            rules = caps.get(key)
            if isinstance(rules, list):
                caps[key] = [
                    {**r, "module": name(r.get("module"))} if isinstance(r, dict) else name(r) for r in rules
                ]
        if isinstance(caps.get("hidden_modules"), list):
            caps["hidden_modules"] = [name(m) for m in caps["hidden_modules"]]
        tools = {**tools, "capabilities": caps}
    if tools:
        tree = {**tree, "tools": tools}
    runtime = tree.get("runtime")
    if isinstance(runtime, dict) and isinstance(runtime.get("direct_modules"), list):
        tree = {**tree, "runtime": {**runtime, "direct_modules": [name(m) for m in runtime["direct_modules"]]}}
    agents = tree.get("agents")
    if isinstance(agents, list):
        out = []
        for agent in agents:
            mods = agent.get("modules") if isinstance(agent, dict) else None
            if isinstance(mods, list):
                agent = {**agent, "modules": [
                    {name(k): v for k, v in m.items()} if isinstance(m, dict) else name(m) for m in mods
                ]}
            elif isinstance(mods, dict):
                agent = {**agent, "modules": {name(k): v for k, v in mods.items()}}
            out.append(agent)
        tree = {**tree, "agents": out}
    return tree


def _drop_errors_inside_lacking_modules(problems: Any, tree: Any, known: Mapping[str, Any]) -> None:
    """A module this build lacks is one error (``module 'X' is not available in this build``): what
    its own block says (settings, ``{{env.X}}`` references) is never used here, so errors about it
    would only bury the one that matters."""
    tools = tree.get("tools") if isinstance(tree, dict) else None
    modules = tools.get("modules") if isinstance(tools, dict) else None
    if not isinstance(modules, dict):
        return
    lacking = {m for m in modules if isinstance(m, str) and m not in known}
    if not lacking:
        return
    problems.errors[:] = [
        (path, message) for path, message in problems.errors
        if not (len(path) > 3 and path[:2] == ("tools", "modules") and path[2] in lacking)
    ]


def _catalog(registry: Any, tree: Any) -> dict[str, list[str] | None]:
    """Known actions per module, plus this manifest's virtual modules (``mcp_<server>``) with
    ``None``: any action name is accepted for them, their tools are listed only at run time."""
    catalog: dict[str, list[str] | None] = dict(registry.known_actions())
    tools = tree.get("tools") if isinstance(tree, dict) else None
    modules = tools.get("modules") if isinstance(tools, dict) else None
    if isinstance(modules, dict):
        # The alias pass has folded flat settings into `config:`; the hook reads a module's config.
        configs = {
            module: block["config"] if isinstance(block, dict) and isinstance(block.get("config"), dict) else block
            for module, block in modules.items()
        }
        for virtual in registry.virtual_module_ids(configs):
            catalog.setdefault(virtual, None)
    return catalog


def _unique(items: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    seen: set[tuple[Path, str]] = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _render(
    errors: list[tuple[Path, str]], paths: PathMap, locations: Mapping[Path, tuple[int, int]]
) -> list[dict]:
    rendered: list[dict] = []
    for path, message in _unique(errors):
        original = paths.to_original(path)
        item: dict = {"path": format_path(original), "message": message}
        # A missing key has no position of its own: point at the nearest block that holds it.
        for size in range(len(original), 0, -1):
            where = locations.get(original[:size])
            if where is not None:
                item["line"], item["column"] = where
                break
        rendered.append(item)
    if len(rendered) > MAX_REPORTED_ERRORS:
        extra = len(rendered) - MAX_REPORTED_ERRORS
        rendered = rendered[:MAX_REPORTED_ERRORS]
        rendered.append({"path": "", "message": f"{extra} more errors not shown; fix the ones above first"})
    return rendered
