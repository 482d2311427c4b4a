"""The alias pass: fold the legacy forms into the canonical blocks, as the original Digitorn does.

The original (``core/app/schema_aliases.py``) reshapes a manifest before validating it; this pass
does the same, so that every manifest written for it compiles here unchanged:

* ``execution:`` -> ``runtime:`` (``workspace`` -> ``workdir``, ``workspace_mode`` -> ``workdir_mode``,
  ``greeting`` -> ``ui.greeting``, ``sandbox`` / ``credentials_schema`` -> ``security``);
* ``runtime.flow`` -> top-level ``flow``; ``runtime.greeting|sandbox|credentials_schema`` and
  ``runtime.workspace|workspace_mode`` are lifted the same way when written in ``runtime:``;
* top-level ``modules`` / ``capabilities`` / ``channels`` -> ``tools.*``; ``behavior`` ->
  ``security.behavior``; ``widgets`` / ``workspace`` / ``preview`` / ``theme`` / ``features`` /
  ``slash_commands`` -> ``ui.*``; ``skills`` / ``variables`` / ``include`` -> ``dev.*``;
  ``middleware`` / ``pipeline`` -> ``runtime.*``; ``dependencies:`` is split the same way;
* ``app.features`` / ``app.theme`` -> ``ui.*``; per agent ``coordination:`` / ``instructions:``
  -> ``delegate_to`` / ``pool`` / ``skills`` / ``capabilities`` / ``specialty``.

The legacy forms may sit beside the nested blocks (``app:`` with ``execution:``, most of the
original's examples): when both set the same key, **the nested form wins** and the dropped legacy
value is reported as a warning. This project's own earlier forms keep compiling too: top-level
``app_id`` / ``name`` / ``version`` / ``description`` / ``mode`` (folded into ``app`` / ``runtime``),
``app.mode`` (-> ``runtime.mode``), ``agent:`` (one agent, id ``main``), a module list
(``modules: [filesystem]``), and in an agent ``provider:`` / ``model:`` beside the other keys or
``brain: "openai/gpt-4o-mini"``.

A :class:`PathMap` remembers where each moved value came from so errors name the path the author
wrote (``execution.max_turns``, not ``runtime.max_turns``).
"""

from __future__ import annotations

from typing import Any

from .problems import Path, PathMap, Problems, describe_type

CANONICAL_KEYS = (
    "schema_version", "app", "runtime", "agents", "tools", "security", "ui", "dev", "flow", "templates",
)
# Top-level keys of the Go port accepted as-is (reported as not acted on).
EXTRA_TOP_KEYS = ("requirements", "context", "documents")
TOP_LEVEL_TO_NESTED: dict[str, tuple[str, str]] = {
    "modules": ("tools", "modules"),
    "capabilities": ("tools", "capabilities"),
    "channels": ("tools", "channels"),
    "behavior": ("security", "behavior"),
    "widgets": ("ui", "widgets"),
    "workspace": ("ui", "workspace"),
    "preview": ("ui", "preview"),
    "theme": ("ui", "theme"),
    "features": ("ui", "features"),
    "slash_commands": ("ui", "slash_commands"),
    "greeting": ("ui", "greeting"),
    "skills": ("dev", "skills"),
    "variables": ("dev", "variables"),
    "include": ("dev", "include"),
    "middleware": ("runtime", "middleware"),
    "pipeline": ("runtime", "pipeline"),
}
EXECUTION_SUBFIELDS: dict[str, tuple[str, str]] = {
    "sandbox": ("security", "sandbox"),
    "credentials_schema": ("security", "credentials_schema"),
    "greeting": ("ui", "greeting"),
    "workspace": ("runtime", "workdir"),
    "workspace_mode": ("runtime", "workdir_mode"),
    "flow": ("flow", ""),
}
DEPENDENCIES_TO_NESTED: dict[str, tuple[str, str]] = {
    "variables": ("dev", "variables"),
    "channels": ("tools", "channels"),
    "credentials": ("security", "credentials_schema"),
    "credentials_schema": ("security", "credentials_schema"),
    "payload": ("runtime", "payload_schema"),
    "payload_schema": ("runtime", "payload_schema"),
}
# This project's earlier flat identity keys.
FLAT_APP_KEYS = ("app_id", "name", "version", "description")
LEGACY_KEYS = (*TOP_LEVEL_TO_NESTED, *FLAT_APP_KEYS, "mode", "execution", "agent", "dependencies")
DEFAULT_LEGACY_AGENT_ID = "main"
MODULE_BLOCK_KEYS = ("config", "setup", "constraints", "middleware", "credential")
EXTENSION_PREFIX = "x-"


class _Folder:
    def __init__(self, problems: Problems, paths: PathMap):
        self.problems = problems
        self.paths = paths

    def block(self, out: dict[str, Any], name: str) -> dict[str, Any] | None:
        """The nested block ``name`` of ``out`` (created when absent); None when it is not a mapping."""
        current = out.get(name)
        if current is None:
            current = {}
            out[name] = current
        return current if isinstance(current, dict) else None

    def move(self, out: dict[str, Any], value: Any, origin: Path, block: str, key: str) -> None:
        """Put ``value`` at ``block.key`` (or top-level ``block`` when key is ""); nested wins."""
        shown = ".".join(str(p) for p in origin)
        if not key:
            if block in out:
                self.problems.warn(origin, f"ignored: `{block}` is already set with the canonical form")
                return
            out[block] = value
            self.paths.add((block,), origin)
            return
        target = self.block(out, block)
        if target is None:
            return  # the block itself is not a mapping: validation reports it
        if key in target:
            self.problems.warn(
                origin, f"ignored: `{block}.{key}` is also set and the nested form wins (legacy `{shown}`)"
            )
            return
        target[key] = value
        self.paths.add((block, key), origin)


def fold(data: dict[str, Any], problems: Problems) -> tuple[dict[str, Any] | None, PathMap]:
    """The canonical tree (without ``schema_version``) and the path map; None when unusable.

    Top-level keys starting with ``x-`` are extension fields, as in docker-compose: a place to hold
    YAML anchors (``x-brain: &brain {...}``) that the blocks reuse. They are dropped here.
    """
    paths = PathMap()
    f = _Folder(problems, paths)
    data = {k: v for k, v in data.items() if not k.startswith(EXTENSION_PREFIX)}
    version = data.get("schema_version")
    if isinstance(version, str) and version.strip() in ("1", "2"):
        version = int(version.strip())
    if "schema_version" in data and (isinstance(version, bool) or version not in (1, 2)):
        problems.error(
            ("schema_version",),
            f"must be 1 (the legacy flat form) or 2 (app/runtime/agents/tools blocks), got {version!r}",
        )
    out: dict[str, Any] = {k: v for k, v in data.items() if k not in LEGACY_KEYS and k != "schema_version"}

    # 1. execution: -> runtime / security / ui (nested wins).
    if "execution" in data:
        execution = data["execution"]
        if execution is None:
            execution = {}
        if not isinstance(execution, dict):
            problems.error(
                ("execution",),
                f"must be a mapping (mode, max_turns, timeout, ...), got {describe_type(execution)}",
            )
        else:
            for key, value in execution.items():
                block, target = EXECUTION_SUBFIELDS.get(key, ("runtime", key))
                f.move(out, value, ("execution", key), block, target)
            if "runtime" in out and isinstance(out["runtime"], dict) and not data.get("runtime"):
                paths.add(("runtime",), ("execution",))

    # 1b. fields written under runtime: that belong elsewhere.
    runtime = out.get("runtime")
    if isinstance(runtime, dict):
        runtime = dict(runtime)
        out["runtime"] = runtime
        for key in ("flow", "sandbox", "credentials_schema", "greeting"):
            if key in runtime and ("runtime", key) not in paths._prefixes:
                block, target = EXECUTION_SUBFIELDS[key]
                f.move(out, runtime.pop(key), ("runtime", key), block, target)
        for old, new in (("workspace", "workdir"), ("workspace_mode", "workdir_mode")):
            if old in runtime:
                value = runtime.pop(old)
                if new in runtime:
                    problems.warn(("runtime", old), f"ignored: `runtime.{new}` is also set")
                else:
                    runtime[new] = value
                    paths.add(("runtime", new), ("runtime", old))

    # 2. top-level legacy fields -> nested blocks.
    for key, (block, target) in TOP_LEVEL_TO_NESTED.items():
        if key not in data:
            continue
        value = data[key]
        if key == "modules":
            value = _fold_modules(value, problems, paths)
        f.move(out, value, (key,), block, target)

    # 3. dependencies: split.
    deps = data.get("dependencies")
    if isinstance(deps, dict):
        for key, value in deps.items():
            dest = DEPENDENCIES_TO_NESTED.get(key)
            if dest is None:
                problems.error(("dependencies", key), "unknown key; expected one of: " + ", ".join(DEPENDENCIES_TO_NESTED))
                continue
            f.move(out, value, ("dependencies", key), *dest)
    elif "dependencies" in data and deps is not None:
        problems.error(("dependencies",), f"must be a mapping, got {describe_type(deps)}")

    # 4. this project's flat identity keys -> app (nested wins); app.features/theme -> ui.
    for key in FLAT_APP_KEYS:
        if key in data:
            f.move(out, data[key], (key,), "app", key)
    if "mode" in data:
        f.move(out, data["mode"], ("mode",), "runtime", "mode")
    app = out.get("app")
    if isinstance(app, dict):
        app = dict(app)
        out["app"] = app
        for key in ("features", "theme"):
            if key in app:
                f.move(out, app.pop(key), ("app", key), "ui", key)
        if "mode" in app:  # this project's earlier app.mode; the original's place is runtime.mode
            f.move(out, app.pop("mode"), ("app", "mode"), "runtime", "mode")

    # 4b. flat settings directly under a module fold into its config (config wins), as the original
    # does for old flat module blocks; errors still name the key where it was written.
    tools = out.get("tools")
    modules = tools.get("modules") if isinstance(tools, dict) else None
    if isinstance(modules, dict):
        folded_modules = {}
        for module_id, block in modules.items():
            if isinstance(block, dict) and any(k not in MODULE_BLOCK_KEYS for k in block):
                flat = {k: v for k, v in block.items() if k not in MODULE_BLOCK_KEYS}
                config = block.get("config")
                if config is None or isinstance(config, dict):
                    block = {k: v for k, v in block.items() if k in MODULE_BLOCK_KEYS}
                    block["config"] = {**flat, **(config or {})}
                    where = paths.to_original(("tools", "modules", module_id))
                    for key in flat:
                        paths.add(("tools", "modules", module_id, "config", key), (*where, key))
            folded_modules[module_id] = _mcp_server_names(module_id, block, paths)
        out["tools"] = {**tools, "modules": folded_modules}

    # 5. agents.
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
    agents = out.get("agents")
    if isinstance(agents, list) and "agent" not in data:
        out["agents"] = [
            _fold_agent(a, ("agents", i), ("agents", i), problems, paths) if isinstance(a, dict) else a
            for i, a in enumerate(agents)
        ]
    if problems:
        return None, paths
    return out, paths


def _mcp_server_names(module_id: str, block: Any, paths: PathMap) -> Any:
    """The original's shorthand ``servers: [github, memory]``: servers of its MCP catalog named
    without settings, the same as ``servers: {github: {}, memory: {}}``."""
    config = block.get("config") if isinstance(block, dict) else None
    servers = config.get("servers") if isinstance(config, dict) else None
    if module_id != "mcp" or not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
        return block
    if len(set(servers)) != len(servers):
        return block  # a name listed twice: left for validation to report
    where = paths.to_original(("tools", "modules", module_id, "config", "servers"))
    for index, name in enumerate(servers):
        paths.add(("tools", "modules", module_id, "config", "servers", name), (*where, index))
    return {**block, "config": {**config, "servers": {name: {} for name in servers}}}


def _fold_modules(modules: Any, problems: Problems, paths: PathMap) -> Any:
    if isinstance(modules, list):
        folded: dict[str, Any] = {}
        for index, item in enumerate(modules):
            if not isinstance(item, str):
                problems.error(("modules", index), f"must be a module id (a string), got {describe_type(item)}")
            elif item in folded:
                problems.error(("modules", index), f"module '{item}' is listed twice")
            else:
                folded[item] = None
                paths.add(("tools", "modules", item), ("modules", index))
        return folded
    return modules


def _fold_agent(agent: dict[str, Any], canonical: Path, original: Path, problems: Problems, paths: PathMap) -> dict:
    agent = dict(agent)
    coord = agent.pop("coordination", None)
    if isinstance(coord, dict):
        for key in ("delegate_to", "pool"):
            if key in coord and key not in agent:
                agent[key] = coord[key]
                paths.add((*canonical, key), (*original, "coordination", key))
    instr = agent.pop("instructions", None)
    if isinstance(instr, dict):
        for key, target in (("file", "skills"), ("capabilities", "capabilities"), ("specialty", "specialty")):
            if key in instr and target not in agent:
                agent[target] = instr[key]
                paths.add((*canonical, target), (*original, "instructions", key))
    if "prompt" in agent and "system_prompt" not in agent:
        agent["system_prompt"] = agent.pop("prompt")
        paths.add((*canonical, "system_prompt"), (*original, "prompt"))
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
