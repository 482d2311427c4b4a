"""Validate the canonical manifest tree and build the :class:`CompiledApp`.

Every check reports to :class:`Problems` with the YAML path and keeps going, so one compile lists
every problem it can find. Values arrive already interpolated; a string that came from an
``{{env.X}}`` template may be read as a number or boolean where one is expected (see
``interpolation``), any other string may not: ``timeout: "30"`` is an error that says to drop the
quotes, because silently accepting it hides a typo in a value that was meant to be text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jsonschema

from .compiled import (
    SECRET_MARKER,
    AgentSpec,
    BrainSpec,
    Capabilities,
    CapabilityRule,
    CompiledApp,
    Runtime,
)
from .interpolation import describe_template
from .legacy import CANONICAL_KEYS
from .problems import Path, Problems, describe_type, did_you_mean

APP_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
AGENT_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,63}$")
RESERVED_APP_IDS = frozenset({"deploy"})  # /api/apps/deploy is a route, not an app
MODES = ("conversation", "one_shot")
PROVIDERS = ("openai", "anthropic", "scripted")
MODEL_EXAMPLES = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}
POLICIES = ("auto", "approve", "block")
RISK_LEVELS = ("low", "medium", "high")

APP_KEYS = ("app_id", "name", "version", "description", "mode")
RUNTIME_KEYS = (
    "max_turns",
    "timeout",
    "approval_timeout",
    "max_tool_result_chars",
    "context_window_messages",
    "session_idle_seconds",
    "rate_limit_rpm",
)
AGENT_KEYS = ("id", "name", "system_prompt", "modules", "max_turns", "brain")
BRAIN_KEYS = ("provider", "model", "temperature", "max_tokens", "timeout", "config")
TOOLS_KEYS = ("modules", "capabilities")
CAPABILITY_KEYS = ("default_policy", "max_risk_level", "grant", "approve", "deny")
RULE_KEYS = ("module", "actions", "reason")
SCRIPT_RULE_KEYS = ("when", "steps")
STEP_KINDS = ("call", "calls", "say")
# Column widths of the apps table (apps_registry.models.App).
MAX_NAME_CHARS = 200
MAX_VERSION_CHARS = 50

MISSING: Any = object()
_BOOL_WORDS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}


def _get(mapping: Mapping[str, Any] | None, key: str) -> Any:
    """The value, or MISSING when absent or null: null means "use the default" for optional keys."""
    if not mapping:
        return MISSING
    value = mapping.get(key, MISSING)
    return MISSING if value is None else value


class Checker:
    def __init__(
        self,
        problems: Problems,
        templates: Mapping[Path, str],
        catalog: Mapping[str, Sequence[str] | None],
        config_schema: Callable[[str], dict],
        meta_tools: Sequence[str] = (),
    ):
        self.meta_tools = frozenset(meta_tools)
        self.problems = problems
        self.templates = templates
        self.catalog = {
            module: None if actions is None else list(actions) for module, actions in catalog.items()
        }
        self.config_schema = config_schema

    # -- primitives ------------------------------------------------------------------------
    def error(self, path: Path, message: str) -> None:
        self.problems.error(path, message)

    def _type_error(self, path: Path, value: Any, expected: str) -> None:
        got = describe_type(value)
        message = f"must be {expected}, got {got}"
        if isinstance(value, str):
            message += f" {value!r}"
            if SECRET_MARKER.search(value):
                message += "; {{secret.KEY}} references are only allowed in text values (they are resolved at run time)"
            elif path in self.templates:
                message += describe_template(path, self.templates, value)
            elif expected in ("an integer", "a number") and _is_number(value):
                message += "; remove the quotes"
        elif isinstance(value, bool) and expected.startswith("a string"):
            message += " (YAML reads yes/no/on/off/true/false as booleans); quote it"
        elif isinstance(value, int | float) and expected.startswith("a string"):
            message += f" {value!r}; quote it"
        self.error(path, message)

    def mapping(
        self,
        value: Any,
        path: Path,
        allowed: Sequence[str] | None,
        *,
        required: Mapping[str, str] | None = None,
        what: str = "a mapping",
    ) -> dict[str, Any] | None:
        """The mapping (``{}`` for null), after reporting unknown and missing keys; None if not a mapping."""
        if value is None or value is MISSING:
            value = {}
        if not isinstance(value, dict):
            self._type_error(path, value, what)
            return None
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    self.error((*path, key), f"unknown key; {did_you_mean(key, allowed)}")
        for key, hint in (required or {}).items():
            if _get(value, key) is MISSING:
                self.error((*path, key), f"required{': ' + hint if hint else ''}")
        return value

    def string(self, value: Any, path: Path, *, default: Any = MISSING, max_chars: int | None = None) -> Any:
        if value is MISSING:
            return default
        if not isinstance(value, str):
            self._type_error(path, value, "a string")
            return default
        if max_chars is not None and len(value) > max_chars:
            self.error(path, f"must be at most {max_chars} characters, got {len(value)}")
        return value

    def integer(
        self,
        value: Any,
        path: Path,
        *,
        default: Any = MISSING,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> Any:
        if value is MISSING:
            return default
        if isinstance(value, str) and path in self.templates and not SECRET_MARKER.search(value):
            try:
                value = int(value.strip())
            except ValueError:
                self._type_error(path, value, "an integer")
                return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, float):
            self.error(path, f"must be a whole number, got {value}")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self._type_error(path, value, "an integer")
            return default
        if not self._in_range(value, path, minimum, maximum):
            return default
        return value

    def number(
        self,
        value: Any,
        path: Path,
        *,
        default: Any = MISSING,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
    ) -> Any:
        if value is MISSING:
            return default
        if isinstance(value, str) and path in self.templates and not SECRET_MARKER.search(value):
            try:
                value = float(value.strip())
            except ValueError:
                self._type_error(path, value, "a number")
                return default
            if not math.isfinite(value):
                self.error(path, f"must be a finite number{describe_template(path, self.templates, value)}")
                return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._type_error(path, value, "a number")
            return default
        if above is not None and value <= above:
            self.error(path, f"must be > {above:g}, got {value}")
            return default
        if not self._in_range(value, path, minimum, maximum):
            return default
        return float(value)

    def _in_range(self, value: float, path: Path, minimum: float | None, maximum: float | None) -> bool:
        if minimum is not None and value < minimum:
            bound = f"between {minimum:g} and {maximum:g}" if maximum is not None else f">= {minimum:g}"
            self.error(path, f"must be {bound}, got {value}")
            return False
        if maximum is not None and value > maximum:
            self.error(path, f"must be <= {maximum:g}, got {value}")
            return False
        return True

    def choice(
        self, value: Any, path: Path, choices: Sequence[str], *, default: Any = MISSING, what: str = ""
    ) -> Any:
        if value is MISSING:
            return default
        if not isinstance(value, str):
            self._type_error(path, value, "one of " + ", ".join(choices))
            return default
        if value not in choices:
            message = f"unknown {what + ' ' if what else ''}{value!r}; {did_you_mean(value, choices)}"
            if "did you mean" in message:
                message += f" (one of {', '.join(choices)})"
            self.error(path, message)
            return default
        return value

    # -- blocks ----------------------------------------------------------------------------
    def app(self, top: dict[str, Any]) -> dict[str, Any]:
        path: Path = ("app",)
        raw = top.get("app", MISSING)
        if raw is MISSING:
            self.error(path, "required: the app block, e.g. app: {app_id: my-app, name: My App}")
            return {}
        block = self.mapping(raw, path, APP_KEYS, required={"app_id": "the app's id, e.g. app_id: my-app"})
        if block is None:
            return {}
        out: dict[str, Any] = {}
        app_id = self.string(_get(block, "app_id"), (*path, "app_id"), default=None)
        if app_id is not None:
            if not APP_ID.match(app_id):
                self.error(
                    (*path, "app_id"),
                    f"{app_id!r} is not a valid app id: use 1-128 letters, digits, '_', '.' or '-', "
                    "starting with a letter or digit",
                )
            elif app_id.lower() in RESERVED_APP_IDS:
                self.error(
                    (*path, "app_id"),
                    f"{app_id!r} is reserved (POST /api/apps/{app_id} is a route of the API); choose another id",
                )
            else:
                out["app_id"] = app_id
        name = self.string(_get(block, "name"), (*path, "name"), default=None, max_chars=MAX_NAME_CHARS)
        out["name"] = name if name else out.get("app_id", "")
        out["version"] = self._version(_get(block, "version"), (*path, "version"))
        out["description"] = self.string(_get(block, "description"), (*path, "description"), default="")
        out["mode"] = self.choice(
            _get(block, "mode"), (*path, "mode"), MODES, default="conversation", what="mode"
        )
        return out

    def _version(self, value: Any, path: Path) -> str:
        if value is MISSING:
            return "1.0"
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self._type_error(path, value, 'a version string such as "1.0"')
            return "1.0"
        text = str(value).strip()
        if not text:
            self.error(path, 'must not be empty; write a version such as "1.0"')
        elif len(text) > MAX_VERSION_CHARS:
            self.error(path, f"must be at most {MAX_VERSION_CHARS} characters, got {len(text)}")
        return text

    def runtime(self, top: dict[str, Any]) -> Runtime:
        path: Path = ("runtime",)
        block = self.mapping(top.get("runtime"), path, RUNTIME_KEYS) or {}
        d = Runtime()

        def p(key: str) -> Path:
            return (*path, key)

        return Runtime(
            max_turns=self.integer(_get(block, "max_turns"), p("max_turns"), default=d.max_turns, minimum=1),
            timeout=self.number(_get(block, "timeout"), p("timeout"), default=d.timeout, above=0),
            approval_timeout=self.integer(
                _get(block, "approval_timeout"),
                p("approval_timeout"),
                default=d.approval_timeout,
                minimum=30,
                maximum=3600,
            ),
            max_tool_result_chars=self.integer(
                _get(block, "max_tool_result_chars"),
                p("max_tool_result_chars"),
                default=d.max_tool_result_chars,
                minimum=1,
            ),
            context_window_messages=self.integer(
                _get(block, "context_window_messages"),
                p("context_window_messages"),
                default=d.context_window_messages,
                minimum=1,
            ),
            session_idle_seconds=self.integer(
                _get(block, "session_idle_seconds"), p("session_idle_seconds"), default=None, minimum=1
            ),
            rate_limit_rpm=self.integer(
                _get(block, "rate_limit_rpm"), p("rate_limit_rpm"), default=None, minimum=1
            ),
        )

    def declared_modules(self, top: dict[str, Any]) -> list[str]:
        tools = top.get("tools")
        modules = tools.get("modules") if isinstance(tools, dict) else None
        declared = [m for m in modules if isinstance(m, str)] if isinstance(modules, dict) else []
        # Virtual modules (mcp_<server>, one per MCP server the mcp config declares) come in the
        # catalog with actions None (known only once the server answers): declared with their parent.
        return declared + [m for m, actions in self.catalog.items() if actions is None and m not in declared]

    def agents(self, top: dict[str, Any], declared: list[str]) -> tuple[AgentSpec, ...]:
        path: Path = ("agents",)
        raw = top.get("agents", MISSING)
        example = "agents: [{id: assistant, brain: {provider: openai, model: gpt-4o-mini}}]"
        if raw is MISSING or raw is None:
            self.error(path, f"required: at least one agent, e.g. {example}")
            return ()
        if not isinstance(raw, list):
            hint = "; write each agent as a list item ('- id: assistant')" if isinstance(raw, dict) else ""
            self.error(path, f"must be a list of agents, got {describe_type(raw)}{hint}")
            return ()
        if not raw:
            self.error(path, f"must declare at least one agent, e.g. {example}")
            return ()
        specs = []
        first_seen: dict[str, int] = {}
        for index, item in enumerate(raw):
            spec = self.agent(item, (*path, index), declared)
            agent_id = item.get("id") if isinstance(item, dict) else None
            if isinstance(agent_id, str):
                if agent_id in first_seen:
                    self.error(
                        (*path, index, "id"),
                        f"duplicate agent id {agent_id!r} (also agents[{first_seen[agent_id]}].id); "
                        "agent ids must be unique",
                    )
                    continue
                first_seen[agent_id] = index
            if spec is not None:
                specs.append(spec)
        return tuple(specs)

    def agent(self, raw: Any, path: Path, declared: list[str]) -> AgentSpec | None:
        block = self.mapping(
            raw,
            path,
            AGENT_KEYS,
            required={
                "id": "e.g. id: assistant",
                "brain": "e.g. brain: {provider: openai, model: gpt-4o-mini}",
            },
            what="a mapping describing one agent",
        )
        if block is None:
            return None
        agent_id = self.string(_get(block, "id"), (*path, "id"), default=None)
        if agent_id is not None and not AGENT_ID.match(agent_id):
            self.error(
                (*path, "id"),
                f"{agent_id!r} is not a valid agent id: use 1-64 letters, digits, '_' or '-', "
                "starting with a letter or digit",
            )
            agent_id = None
        name = self.string(_get(block, "name"), (*path, "name"), default="")
        system_prompt = self.string(_get(block, "system_prompt"), (*path, "system_prompt"), default="")
        errors_before = len(self.problems.errors)
        modules = self._agent_modules(_get(block, "modules"), (*path, "modules"), declared)
        # A bad entry is already reported; checking the script against the rest would only echo it.
        restriction = modules if len(self.problems.errors) == errors_before else None
        max_turns = self.integer(_get(block, "max_turns"), (*path, "max_turns"), default=None, minimum=1)
        brain = None
        if _get(block, "brain") is not MISSING:
            brain = self.brain(block["brain"], (*path, "brain"), declared, restriction)
        if agent_id is None or brain is None:
            return None
        return AgentSpec(
            id=agent_id,
            name=name or agent_id,
            system_prompt=system_prompt,
            brain=brain,
            modules=modules,
            max_turns=max_turns,
        )

    def _agent_modules(self, raw: Any, path: Path, declared: list[str]) -> tuple[str, ...] | None:
        if raw is MISSING:
            return None
        if not isinstance(raw, list):
            self._type_error(path, raw, "a list of module ids (declared under tools.modules)")
            return None
        out: list[str] = []
        for index, item in enumerate(raw):
            if not isinstance(item, str):
                self._type_error((*path, index), item, "a module id (a string)")
            elif item in out:
                self.error((*path, index), f"module {item!r} is listed twice")
            elif item not in declared:
                self.error((*path, index), self._undeclared(item, declared))
            else:
                out.append(item)
        return tuple(out)

    def _undeclared(self, module: str, declared: list[str]) -> str:
        if module in self.catalog:
            return f"module {module!r} is not declared under tools.modules; declare it there first"
        return f"unknown module {module!r}; {did_you_mean(module, declared or self.catalog)}"

    def brain(
        self, raw: Any, path: Path, declared: list[str], agent_modules: tuple[str, ...] | None
    ) -> BrainSpec | None:
        block = self.mapping(raw, path, BRAIN_KEYS, required={"provider": "one of " + ", ".join(PROVIDERS)})
        if block is None:
            return None
        provider = self.choice(
            _get(block, "provider"), (*path, "provider"), PROVIDERS, default=None, what="provider"
        )
        model = self.string(_get(block, "model"), (*path, "model"), default="")
        if provider in MODEL_EXAMPLES and not model and _get(block, "model") is MISSING:
            self.error(
                (*path, "model"),
                f"required for provider {provider!r}, e.g. model: {MODEL_EXAMPLES[provider]}",
            )
        elif provider in MODEL_EXAMPLES and isinstance(model, str) and not model.strip():
            self.error(
                (*path, "model"),
                f"must not be empty for provider {provider!r}, e.g. {MODEL_EXAMPLES[provider]}",
            )
        d = BrainSpec(provider="scripted")
        temperature = self.number(
            _get(block, "temperature"), (*path, "temperature"), default=d.temperature, minimum=0, maximum=2
        )
        max_tokens = self.integer(_get(block, "max_tokens"), (*path, "max_tokens"), default=None, minimum=1)
        timeout = self.number(_get(block, "timeout"), (*path, "timeout"), default=d.timeout, above=0)
        config = self.mapping(
            block.get("config"), (*path, "config"), None, what="a mapping of provider settings"
        )
        if config is not None:
            config = dict(config)
            if provider == "scripted":
                config = self._scripted_config(config, (*path, "config"), declared, agent_modules)
            elif provider in MODEL_EXAMPLES:
                self._remote_config(config, (*path, "config"))
        if provider is None or config is None:
            return None
        return BrainSpec(
            provider=provider,
            model=model,
            temperature=temperature,
            max_tokens=max_tokens,
            timeout=timeout,
            config=config,
        )

    def _remote_config(self, config: dict[str, Any], path: Path) -> None:
        base_url = config.get("base_url")
        if base_url is not None:
            if not isinstance(base_url, str):
                self._type_error((*path, "base_url"), base_url, "a URL string")
            elif not SECRET_MARKER.search(base_url) and not base_url.startswith(("http://", "https://")):
                self.error((*path, "base_url"), f"must be an http:// or https:// URL, got {base_url!r}")
        api_key = config.get("api_key")
        if api_key is not None and not isinstance(api_key, str):
            self._type_error((*path, "api_key"), api_key, "a string (usually {{secret.KEY}})")

    # -- scripted brain ----------------------------------------------------------------------
    def _scripted_config(
        self, config: dict[str, Any], path: Path, declared: list[str], agent_modules: tuple[str, ...] | None
    ) -> dict[str, Any]:
        rules = config.get("rules")
        rules_path = (*path, "rules")
        example = "rules: [{when: 'hello', steps: [{say: 'Hi!'}]}]"
        if rules is None:
            self.error(rules_path, f"required for the scripted provider, e.g. {example}")
            return config
        if not isinstance(rules, list):
            self._type_error(rules_path, rules, "a list of rules")
            return config
        if not rules:
            self.error(rules_path, f"must hold at least one rule, e.g. {example}")
            return config
        tools = declared if agent_modules is None else list(agent_modules)
        config["rules"] = [
            self._script_rule(rule, (*rules_path, index), tools, agent_modules is not None)
            for index, rule in enumerate(rules)
        ]
        return config

    def _script_rule(self, raw: Any, path: Path, tools: list[str], restricted: bool) -> Any:
        block = self.mapping(
            raw,
            path,
            SCRIPT_RULE_KEYS,
            required={"steps": "e.g. steps: [{say: 'Hello'}]"},
            what="a rule mapping {when, steps}",
        )
        if block is None:
            return raw
        out = dict(block)
        when = _get(block, "when")
        if when is not MISSING:
            when = self.string(when, (*path, "when"), default=None)
            if when is not None:
                try:
                    re.compile(when)
                except re.error as exc:
                    self.error(
                        (*path, "when"),
                        f"invalid regular expression {when!r}: {exc.msg} at position {exc.pos}",
                    )
        steps = _get(block, "steps")
        if steps is MISSING:
            return out
        if not isinstance(steps, list):
            self._type_error((*path, "steps"), steps, "a list of steps")
            return out
        out["steps"] = [
            self._step(step, (*path, "steps", i), tools, restricted) for i, step in enumerate(steps)
        ]
        return out

    def _step(self, raw: Any, path: Path, tools: list[str], restricted: bool) -> Any:
        if not isinstance(raw, dict):
            self._type_error(
                path, raw, "a step mapping: {call: module.action}, {calls: [...]} or {say: text}"
            )
            return raw
        kinds = [k for k in STEP_KINDS if k in raw]
        if not kinds:
            unknown = next(iter(raw), None)
            hint = f" ({unknown!r}: {did_you_mean(unknown, STEP_KINDS)})" if unknown is not None else ""
            self.error(path, f"a step needs one of call, calls or say{hint}")
            return raw
        if len(kinds) > 1:
            self.error(
                path,
                f"a step has exactly one of call, calls or say, found {' and '.join(kinds)}; split it into steps",
            )
            return raw
        kind = kinds[0]
        allowed = ("call", "params") if kind == "call" else (kind,)
        self.mapping(raw, path, allowed)
        out = dict(raw)
        if kind == "say":
            self.string(raw["say"], (*path, "say"), default=None)
        elif kind == "call":
            out["call"] = self._tool_ref(raw["call"], (*path, "call"), tools, restricted)
            self._params(raw.get("params"), (*path, "params"))
        else:
            calls = raw["calls"]
            if not isinstance(calls, list) or not calls:
                self.error(
                    (*path, "calls"), "must be a non-empty list of {call: module.action, params: {...}}"
                )
                return out
            parsed = []
            for index, item in enumerate(calls):
                item_path = (*path, "calls", index)
                block = self.mapping(
                    item,
                    item_path,
                    ("call", "params"),
                    required={"call": "e.g. call: filesystem.read"},
                    what="a mapping {call, params}",
                )
                if block is None or "call" not in block:
                    parsed.append(item)
                    continue
                block = dict(block)
                block["call"] = self._tool_ref(block["call"], (*item_path, "call"), tools, restricted)
                self._params(block.get("params"), (*item_path, "params"))
                parsed.append(block)
            out["calls"] = parsed
        return out

    def _params(self, raw: Any, path: Path) -> None:
        if raw is not None and not isinstance(raw, dict):
            self._type_error(path, raw, "a mapping of tool parameters")

    def _tool_ref(self, raw: Any, path: Path, tools: list[str], restricted: bool) -> Any:
        """``module.action`` or ``module__action`` -> ``module.action``, checked against the catalog."""
        if not isinstance(raw, str):
            self._type_error(path, raw, "a tool name such as 'filesystem.read'")
            return raw
        if raw in self.meta_tools:
            return raw  # search_tools, execute_tool, background_run, ...: always offered to agents
        module, action = _split_tool(raw)
        if not module or not action:
            self.error(path, f"{raw!r} is not a tool name; write 'module.action', e.g. 'filesystem.read'")
            return raw
        if module not in tools:
            if restricted and module in self.catalog:
                self.error(
                    path,
                    f"module {module!r} is not in this agent's modules ({', '.join(tools) or 'none'}); add it there",
                )
            else:
                self.error(path, self._undeclared(module, tools))
            return raw
        actions = self.catalog.get(module)
        if actions is not None and action not in actions:
            self.error(
                path, f"unknown action {action!r} of module {module!r}; {did_you_mean(action, actions)}"
            )
            return raw
        return f"{module}.{action}"

    # -- tools -------------------------------------------------------------------------------
    def tools(
        self, top: dict[str, Any], declared: list[str]
    ) -> tuple[dict[str, dict[str, Any]], Capabilities | None]:
        path: Path = ("tools",)
        block = self.mapping(top.get("tools"), path, TOOLS_KEYS)
        if block is None:
            return {}, None
        modules = self._modules(block.get("modules"), (*path, "modules"))
        capabilities = None
        if block.get("capabilities") is not None:
            capabilities = self._capabilities(block["capabilities"], (*path, "capabilities"), declared)
        return modules, capabilities

    def _modules(self, raw: Any, path: Path) -> dict[str, dict[str, Any]]:
        block = self.mapping(raw, path, None, what="a mapping of module id -> settings")
        if block is None:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for module, config in block.items():
            module_path = (*path, module)
            if module not in self.catalog:
                self.error(module_path, f"unknown module {module!r}; {did_you_mean(module, self.catalog)}")
                continue
            if config is None:
                config = {}
            if not isinstance(config, dict):
                self._type_error(module_path, config, "a mapping of settings (or empty for the defaults)")
                continue
            out[module] = self._module_config(module, config, module_path)
        return out

    def _module_config(self, module: str, config: dict[str, Any], path: Path) -> dict[str, Any]:
        schema = self.config_schema(module) or {}
        config = _coerce_by_schema(config, schema, path, self.templates)
        validator_cls = jsonschema.validators.validator_for(schema)
        validator = validator_cls(schema)
        for err in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
            where = (*path, *err.absolute_path)
            if (
                err.validator != "type"
                and isinstance(err.instance, str)
                and SECRET_MARKER.search(err.instance)
            ):
                continue  # the value is only known at run time
            if err.validator == "additionalProperties" and isinstance(err.instance, dict):
                known = list((err.schema.get("properties") or {}).keys())
                patterns = list((err.schema.get("patternProperties") or {}).keys())
                for key in err.instance:
                    if key not in known and not any(re.search(p, key) for p in patterns):
                        self.error((*where, key), f"unknown setting; {did_you_mean(key, known)}")
            elif err.validator == "required" and isinstance(err.validator_value, list):
                missing = [
                    k for k in err.validator_value if isinstance(err.instance, dict) and k not in err.instance
                ]
                for key in missing:
                    self.error((*where, key), "required")
            elif err.validator == "type":
                expected = err.validator_value
                expected = " or ".join(expected) if isinstance(expected, list) else str(expected)
                self._type_error(where, err.instance, f"of type {expected}")
            else:
                self.error(where, err.message)
        return config

    def _capabilities(self, raw: Any, path: Path, declared: list[str]) -> Capabilities | None:
        block = self.mapping(raw, path, CAPABILITY_KEYS)
        if block is None:
            return None
        d = Capabilities()
        default_policy = self.choice(
            _get(block, "default_policy"),
            (*path, "default_policy"),
            POLICIES,
            default=d.default_policy,
            what="policy",
        )
        max_risk_level = self.choice(
            _get(block, "max_risk_level"),
            (*path, "max_risk_level"),
            RISK_LEVELS,
            default=d.max_risk_level,
            what="risk level",
        )
        lists: dict[str, tuple[CapabilityRule, ...]] = {}
        for kind in ("grant", "approve", "deny"):
            raw_rules = _get(block, kind)
            rules: list[CapabilityRule] = []
            if raw_rules is not MISSING:
                if not isinstance(raw_rules, list):
                    self._type_error((*path, kind), raw_rules, "a list of rules")
                else:
                    for index, item in enumerate(raw_rules):
                        rule = self._capability_rule(item, (*path, kind, index), declared)
                        if rule is not None:
                            rules.append(rule)
            lists[kind] = tuple(rules)
        return Capabilities(default_policy=default_policy, max_risk_level=max_risk_level, **lists)

    def _capability_rule(self, raw: Any, path: Path, declared: list[str]) -> CapabilityRule | None:
        if isinstance(raw, str):
            module, action = _split_tool(raw)
            module_path = action_path = path
            actions: Any = [action] if action else MISSING
            reason = ""
        else:
            block = self.mapping(
                raw,
                path,
                RULE_KEYS,
                required={"module": "e.g. module: filesystem"},
                what="a module id ('filesystem'), a tool ('filesystem.read') or a mapping {module, actions, reason}",
            )
            if block is None or _get(block, "module") is MISSING:
                return None
            module = self.string(block["module"], (*path, "module"), default=None)
            if module is None:
                return None
            module_path, action_path = (*path, "module"), (*path, "actions")
            actions = _get(block, "actions")
            reason = self.string(_get(block, "reason"), (*path, "reason"), default="")
        if module not in self.catalog:
            self.error(module_path, f"unknown module {module!r}; {did_you_mean(module, self.catalog)}")
            return None
        if module not in declared:
            self.problems.warn(
                module_path,
                f"module {module!r} is not declared under tools.modules, so this rule has no effect",
            )
        if actions is MISSING:
            return CapabilityRule(module=module, actions=None, reason=reason)
        if not isinstance(actions, list):
            self._type_error(action_path, actions, "a list of action names, e.g. [read, ls]")
            return None
        if not actions:
            self.error(
                action_path,
                "must name at least one action; omit 'actions' to cover every action of the module",
            )
            return None
        known = self.catalog[module]
        checked: list[str] = []
        valid = True
        for index, action in enumerate(actions):
            where = action_path if isinstance(raw, str) else (*action_path, index)
            if not isinstance(action, str):
                self._type_error(where, action, "an action name (a string)")
                valid = False
            elif known is not None and action not in known:
                self.error(
                    where, f"unknown action {action!r} of module {module!r}; {did_you_mean(action, known)}"
                )
                valid = False
            elif action not in checked:  # a repeated action is harmless; keep it once
                checked.append(action)
        if not valid:
            return None
        return CapabilityRule(module=module, actions=tuple(checked), reason=reason)

    # -- free-form ---------------------------------------------------------------------------
    def free_form(self, top: dict[str, Any], key: str) -> dict[str, Any]:
        block = self.mapping(top.get(key), (key,), None)
        return dict(block) if block is not None else {}


def _split_tool(name: str) -> tuple[str, str]:
    """``module.action`` or ``module__action`` (the wire form LLM providers need) -> (module, action);
    the dotted form wins, as in ``conversations.brains.base.canonical_tool_name``."""
    if "." in name:
        module, _, action = name.partition(".")
    else:
        module, _, action = name.partition("__")
    return module, action


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _coerce_by_schema(value: Any, schema: Any, path: Path, templates: Mapping[Path, str]) -> Any:
    """Read interpolated strings as the number/boolean the module's JSON schema asks for."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, str) and path in templates and not SECRET_MARKER.search(value):
        wanted = schema.get("type")
        wanted = [wanted] if isinstance(wanted, str) else list(wanted or [])
        if "string" not in wanted:
            text = value.strip()
            for kind in wanted:
                if kind == "integer":
                    try:
                        return int(text)
                    except ValueError:
                        continue
                if kind == "number":
                    try:
                        number = float(text)
                    except ValueError:
                        continue
                    if math.isfinite(number):
                        return number
                if kind == "boolean" and text.lower() in _BOOL_WORDS:
                    return _BOOL_WORDS[text.lower()]
        return value
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        return {
            k: _coerce_by_schema(
                v, properties.get(k, extra if isinstance(extra, dict) else {}), (*path, k), templates
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        items = schema.get("items")
        return [
            _coerce_by_schema(v, items if isinstance(items, dict) else {}, (*path, i), templates)
            for i, v in enumerate(value)
        ]
    return value


def build_app(
    top: dict[str, Any],
    *,
    problems: Problems,
    templates: Mapping[Path, str],
    secret_refs: Sequence[str],
    catalog: Mapping[str, Sequence[str] | None],
    config_schema: Callable[[str], dict],
    meta_tools: Sequence[str] = (),
) -> CompiledApp | None:
    """The compiled app, or None when ``problems`` holds at least one error."""
    checker = Checker(problems, templates, catalog, config_schema, meta_tools)
    checker.mapping(top, (), CANONICAL_KEYS)
    app = checker.app(top)
    runtime = checker.runtime(top)
    declared = checker.declared_modules(top)
    agents = checker.agents(top, declared)
    modules, capabilities = checker.tools(top, declared)
    security = checker.free_form(top, "security")
    ui = checker.free_form(top, "ui")
    dev = checker.free_form(top, "dev")
    if problems or "app_id" not in app:
        return None
    return CompiledApp(
        app_id=app["app_id"],
        name=app["name"],
        version=app["version"],
        description=app["description"],
        mode=app["mode"],
        runtime=runtime,
        agents=agents,
        modules=modules,
        capabilities=capabilities,
        security=security,
        ui=ui,
        dev=dev,
        secret_refs=tuple(secret_refs),
    )
