"""The alias pass: fold the legacy flat form (schema_version 1) into the canonical form (2).

Both forms must compile to the same CompiledApp, so every legacy spelling is rewritten here, before
validation, and a :class:`PathMap` remembers where each moved value came from so that errors still
name the path the author wrote (``execution.max_turns``, not ``runtime.max_turns``).

Legacy spellings accepted:

* top-level ``app_id``, ``name``, ``version``, ``description``, ``mode`` -> ``app.*``;
* ``execution: {mode, max_turns, timeout, approval_timeout, ...}`` -> ``app.mode`` + ``runtime.*``;
* top-level ``modules:`` (a mapping, or a list of module ids) -> ``tools.modules``;
* top-level ``capabilities:`` -> ``tools.capabilities``;
* ``agent:`` (one mapping; ``id`` defaults to ``main``) -> ``agents: [...]``;
* in an agent, ``provider:``/``model:`` beside the other keys, or ``brain: "openai/gpt-4o-mini"``
  -> ``brain: {provider, model}``.
"""

from __future__ import annotations

from typing import Any

from .problems import Path, PathMap, Problems, describe_type, did_you_mean

CANONICAL_KEYS = ("schema_version", "app", "runtime", "agents", "tools", "security", "ui", "dev")
CANONICAL_ONLY = ("app", "runtime", "tools")
# legacy key -> where it lives in the canonical form
LEGACY_ONLY = {
    "app_id": "app.app_id",
    "name": "app.name",
    "version": "app.version",
    "description": "app.description",
    "mode": "app.mode",
    "execution": "runtime (and app.mode)",
    "modules": "tools.modules",
    "capabilities": "tools.capabilities",
    "agent": "agents (a list)",
}
LEGACY_KEYS = ("schema_version", *LEGACY_ONLY, "agents", "security", "ui", "dev")
DEFAULT_LEGACY_AGENT_ID = "main"
EXTENSION_PREFIX = "x-"


def fold(data: dict[str, Any], problems: Problems) -> tuple[dict[str, Any] | None, PathMap]:
    """The canonical tree (without ``schema_version``) and the path map; None when the form is unclear.

    Top-level keys starting with ``x-`` are extension fields, as in docker-compose: a place to hold
    YAML anchors (``x-brain: &brain {...}``) that the blocks reuse. They are dropped here.
    """
    paths = PathMap()
    data = {k: v for k, v in data.items() if not k.startswith(EXTENSION_PREFIX)}
    version = data.get("schema_version")
    if "schema_version" in data and (isinstance(version, bool) or version not in (1, 2)):
        problems.error(
            ("schema_version",),
            f"must be 1 (the legacy flat form) or 2 (app/runtime/agents/tools blocks), got {version!r}",
        )
        version = None
    legacy = [k for k in data if k in LEGACY_ONLY]
    canonical = [k for k in data if k in CANONICAL_ONLY]

    if version == 2 or (version is None and canonical and not legacy):
        for key in legacy:
            problems.error(
                (key,),
                f"'{key}' belongs to the legacy flat form but this manifest uses the schema_version 2 form; "
                f"move it to {LEGACY_ONLY[key]}",
            )
        if legacy:
            return None, paths
        if version is None:
            problems.warn(
                (),
                "no schema_version: read as schema_version 2 because the file uses the "
                + "/".join(canonical)
                + " blocks; add 'schema_version: 2'",
            )
        return {k: v for k, v in data.items() if k != "schema_version"}, paths

    if canonical:
        why = (
            "this manifest declares schema_version: 1"
            if version == 1
            else f"the file mixes the legacy flat form ({', '.join(legacy)}) with the schema_version 2 form"
        )
        for key in canonical:
            problems.error(
                (key,),
                f"'{key}' belongs to the schema_version 2 form but {why}; use one form "
                "(schema_version: 2 with app/runtime/agents/tools blocks is the current one)",
            )
        return None, paths

    return _fold_legacy(data, problems, paths), paths


def _fold_legacy(data: dict[str, Any], problems: Problems, paths: PathMap) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in data:
        if key not in LEGACY_KEYS:
            problems.error((key,), f"unknown key; {did_you_mean(key, LEGACY_KEYS)}")

    app: dict[str, Any] = {}
    paths.add(("app",), ())
    for key in ("app_id", "name", "version", "description", "mode"):
        if key in data:
            app[key] = data[key]
    out["app"] = app

    if "execution" in data:
        execution = data["execution"]
        paths.add(("runtime",), ("execution",))
        if execution is None:
            execution = {}
        if not isinstance(execution, dict):
            problems.error(
                ("execution",),
                f"must be a mapping (mode, max_turns, timeout, ...), got {describe_type(execution)}",
            )
        else:
            runtime = {}
            for key, value in execution.items():
                if key == "mode":
                    if "mode" in data:
                        problems.error(
                            ("execution", "mode"), "mode is also set at the top level; keep only one"
                        )
                        continue
                    app["mode"] = value
                    paths.add(("app", "mode"), ("execution", "mode"))
                else:
                    runtime[key] = value
            out["runtime"] = runtime

    tools: dict[str, Any] = {}
    if "modules" in data:
        tools["modules"] = _fold_modules(data["modules"], problems, paths)
    if "capabilities" in data:
        tools["capabilities"] = data["capabilities"]
        paths.add(("tools", "capabilities"), ("capabilities",))
    if tools:
        out["tools"] = tools

    if "agent" in data and "agents" in data:
        problems.error(("agent",), "use either 'agent' (one agent) or 'agents' (a list of agents), not both")
    elif "agent" in data:
        agent = data["agent"]
        paths.add(("agents",), ("agent",))
        paths.add(("agents", 0), ("agent",))
        if isinstance(agent, dict):
            agent = {"id": DEFAULT_LEGACY_AGENT_ID, **agent}
            out["agents"] = [_fold_agent(agent, ("agents", 0), ("agent",), problems, paths)]
        else:
            problems.error(("agent",), f"must be a mapping describing one agent, got {describe_type(agent)}")
    elif "agents" in data:
        agents = data["agents"]
        if isinstance(agents, list):
            agents = [
                _fold_agent(a, ("agents", i), ("agents", i), problems, paths) if isinstance(a, dict) else a
                for i, a in enumerate(agents)
            ]
        out["agents"] = agents

    for key in ("security", "ui", "dev"):
        if key in data:
            out[key] = data[key]
    return out


def _fold_modules(modules: Any, problems: Problems, paths: PathMap) -> Any:
    if isinstance(modules, list):
        folded: dict[str, Any] = {}
        for index, item in enumerate(modules):
            if not isinstance(item, str):
                problems.error(
                    ("modules", index), f"must be a module id (a string), got {describe_type(item)}"
                )
            elif item in folded:
                problems.error(("modules", index), f"module '{item}' is listed twice")
            else:
                folded[item] = None
                paths.add(("tools", "modules", item), ("modules", index))
        return folded
    paths.add(("tools", "modules"), ("modules",))
    return modules


def _fold_agent(
    agent: dict[str, Any], canonical: Path, original: Path, problems: Problems, paths: PathMap
) -> dict:
    agent = dict(agent)
    brain = agent.get("brain")
    if isinstance(brain, str):
        provider, _, model = brain.partition("/")
        agent["brain"] = {"provider": provider, "model": model} if model else {"provider": provider}
        paths.add((*canonical, "brain", "provider"), (*original, "brain"))
        paths.add((*canonical, "brain", "model"), (*original, "brain"))
    flat = [k for k in ("provider", "model") if k in agent]
    if flat:
        if "brain" in agent:
            problems.error(
                (*original, flat[0]),
                "set the provider and model inside 'brain', or beside the agent's other keys, not both",
            )
            for key in flat:
                agent.pop(key)
        else:
            agent["brain"] = {key: agent.pop(key) for key in flat}
            for key in flat:
                paths.add((*canonical, "brain", key), (*original, key))
            paths.add((*canonical, "brain"), original)
    return agent
