"""The compiled app: a plain, immutable object every other part takes as an argument.

It is what the manifest compiler produces and what is stored (as ``to_dict()``) with the deployment.
Secret references stay as ``{{secret.KEY}}`` markers in the stored form so that no plaintext
secret is ever written into the apps table; :meth:`CompiledApp.with_secrets` returns a copy whose
strings carry the values, used in memory only, and ``secret_values`` lets the tool path mask them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

SECRET_MARKER = re.compile(r"\{\{\s*secret\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# {{env.X}} and {{env.X ?? 'default'}} kept in the stored form (issue: env values are handled like
# secrets): group 1 is the name, group 2/3 the default.
ENV_MARKER = re.compile(
    r"""\{\{\s*env\.([A-Za-z_][A-Za-z0-9_]*)\s*(?:\?\?\s*(?:'([^']*)'|"([^"]*)")\s*)?\}\}"""
)


@dataclass(frozen=True)
class BrainSpec:
    provider: str  # the provider as named in the manifest: openai, deepseek, ollama, anthropic, scripted, ...
    model: str = ""
    temperature: float | None = 0.2
    max_tokens: int | None = None
    timeout: float = 60.0
    config: dict[str, Any] = field(default_factory=dict)  # base_url, api_key, rules, ...
    protocol: str = ""  # openai | anthropic | scripted; "" = from provider (stored before protocols existed)
    top_p: float | None = None
    native_tool_use: bool | None = None  # None: auto (native tool calls)
    context: dict[str, Any] | None = None  # per-brain runtime.context override
    fallback: dict[str, Any] | None = None  # another BrainSpec as a dict, used when this one fails

    def fallback_spec(self) -> BrainSpec | None:
        return BrainSpec(**self.fallback) if self.fallback else None


@dataclass(frozen=True)
class AgentSpec:
    id: str
    name: str = ""
    system_prompt: str = ""
    brain: BrainSpec = field(default_factory=lambda: BrainSpec(provider="scripted"))
    modules: tuple[str, ...] | None = None  # None: every module of the app
    max_turns: int | None = None  # None: runtime.max_turns
    role: str = "worker"
    specialty: str = ""
    delegate_to: tuple[str, ...] = ()
    # {module: (action, ...)} from per-agent modules written as {shell: [bash]}: only those actions
    module_actions: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class CapabilityRule:
    module: str
    actions: tuple[str, ...] | None = None  # None: every action of the module
    reason: str = ""


@dataclass(frozen=True)
class Capabilities:
    default_policy: str = "approve"  # auto | approve | block
    max_risk_level: str = "medium"  # low | medium | high (the original's default)
    grant: tuple[CapabilityRule, ...] = ()
    approve: tuple[CapabilityRule, ...] = ()
    deny: tuple[CapabilityRule, ...] = ()
    hidden_modules: tuple[str, ...] = ()
    hidden_actions: tuple[CapabilityRule, ...] = ()


@dataclass(frozen=True)
class Runtime:
    max_turns: int = 50
    timeout: float = 300.0
    approval_timeout: int = 300
    max_tool_result_chars: int = 20_000
    context_window_messages: int = 60
    session_idle_seconds: int | None = None  # None: the daemon's default
    rate_limit_rpm: int | None = None  # None: the daemon's default
    entry_agent: str = ""  # "": the first agent
    tool_injection: str | None = None  # direct | compact_direct | discovery; None: auto
    direct_modules: tuple[str, ...] = ()
    # strategy (truncate|summarize), keep_recent, compression_trigger, max_tokens, ... (original defaults)
    context: dict[str, Any] = field(default_factory=dict)
    workdir: str = ""
    workdir_mode: str = "auto"  # none | required | fixed | auto
    # runtime.hooks (legacy execution.hooks): {id, on, condition: {type, …}, action: {type, …}, cooldown,
    # max_fires, enabled}, as conversations.hooks evaluates them
    hooks: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class CompiledApp:
    app_id: str
    name: str
    version: str = "1.0"
    description: str = ""
    mode: str = "conversation"  # conversation | one_shot | background | pipeline
    runtime: Runtime = field(default_factory=Runtime)
    agents: tuple[AgentSpec, ...] = ()
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)  # module id -> config
    capabilities: Capabilities | None = None  # None: dev mode, every tool auto
    security: dict[str, Any] = field(default_factory=dict)
    ui: dict[str, Any] = field(default_factory=dict)
    dev: dict[str, Any] = field(default_factory=dict)
    app_meta: dict[str, Any] = field(default_factory=dict)  # display fields: category, icon, color, tags, ...
    # module -> {allowed_actions: [...], blocked_actions: [...]} (constraints: hide from the agent)
    module_constraints: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # accepted keys this daemon does not act on, and other notes
    secret_refs: tuple[str, ...] = ()  # every KEY named by {{secret.KEY}}
    env_refs: tuple[str, ...] = ()  # every VAR named by {{env.VAR}} (kept as markers, resolved in memory)
    # Deployed by an admin key: may read the environment ({{env.X}}, {{secret.X}} fallback,
    # providers' conventional key variables). Set by the deploy service, never by the manifest.
    environment_allowed: bool = False
    secret_values: tuple[str, ...] = ()  # plaintext values, in memory only (with_secrets)

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("secret_values")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompiledApp:
        def rule(d: dict | str) -> CapabilityRule:
            if isinstance(d, str):
                return CapabilityRule(module=d)
            actions = d.get("actions")
            return CapabilityRule(
                module=d["module"], actions=tuple(actions) if actions is not None else None, reason=d.get("reason", "")
            )

        caps = data.get("capabilities")
        capabilities = None
        if caps is not None:
            capabilities = Capabilities(
                default_policy=caps.get("default_policy", "approve"),
                max_risk_level=caps.get("max_risk_level", "high"),
                grant=tuple(rule(r) for r in caps.get("grant", ())),
                approve=tuple(rule(r) for r in caps.get("approve", ())),
                deny=tuple(rule(r) for r in caps.get("deny", ())),
                hidden_modules=tuple(caps.get("hidden_modules", ())),
                hidden_actions=tuple(rule(r) for r in caps.get("hidden_actions", ())),
            )
        agents = []
        for a in data.get("agents", ()):
            mods = a.get("modules")
            agents.append(
                AgentSpec(
                    id=a["id"],
                    name=a.get("name", ""),
                    system_prompt=a.get("system_prompt", ""),
                    brain=BrainSpec(**a.get("brain", {"provider": "scripted"})),
                    modules=tuple(mods) if mods is not None else None,
                    max_turns=a.get("max_turns"),
                    role=a.get("role", "worker"),
                    specialty=a.get("specialty", ""),
                    delegate_to=tuple(a.get("delegate_to", ())),
                    module_actions={k: tuple(v) for k, v in (a.get("module_actions") or {}).items()},
                )
            )
        return cls(
            app_id=data["app_id"],
            name=data.get("name", data["app_id"]),
            version=str(data.get("version", "1.0")),
            description=data.get("description", ""),
            mode=data.get("mode", "conversation"),
            runtime=_runtime(data.get("runtime", {})),
            agents=tuple(agents),
            modules=dict(data.get("modules", {})),
            capabilities=capabilities,
            security=dict(data.get("security", {})),
            ui=dict(data.get("ui", {})),
            dev=dict(data.get("dev", {})),
            app_meta=dict(data.get("app_meta", {})),
            module_constraints=dict(data.get("module_constraints", {})),
            warnings=tuple(data.get("warnings", ())),
            secret_refs=tuple(data.get("secret_refs", ())),
            env_refs=tuple(data.get("env_refs", ())),
            environment_allowed=bool(data.get("environment_allowed", False)),
        )

    # -- secrets -------------------------------------------------------------------------
    def missing_secrets(self, available: dict[str, str]) -> list[str]:
        return [key for key in self.secret_refs if key not in available]

    def with_secrets(self, values: dict[str, str], environ: dict[str, str] | None = None) -> CompiledApp:
        """A copy with every ``{{secret.KEY}}`` replaced; unknown keys stay as markers.

        With ``environ`` (the readable environment variables, see ``manifest.environment``), every
        ``{{env.X}}`` marker is replaced too (its default, or "", when X is not there); the values
        taken from the environment join ``secret_values`` so the tool path masks them.

        Callers check :meth:`missing_secrets` first and raise an error naming the key when a
        part they need still holds a marker.
        """
        used = {k: v for k, v in values.items() if k in self.secret_refs}
        env = dict(environ or {})
        env_used: dict[str, str] = {}

        def env_sub(m: re.Match) -> str:
            name = m.group(1)
            if name in env:
                env_used[name] = env[name]
                return env[name]
            default = m.group(2) if m.group(2) is not None else m.group(3)
            return default if default is not None else ""

        def sub(value: Any) -> Any:
            if isinstance(value, str):
                value = SECRET_MARKER.sub(lambda m: used.get(m.group(1), m.group(0)), value)
                return ENV_MARKER.sub(env_sub, value) if environ is not None else value
            if isinstance(value, dict):
                return {k: sub(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return type(value)(sub(v) for v in value)
            return value

        resolved = CompiledApp.from_dict(sub(self.to_dict()))
        masked = [v for v in used.values() if v] + [v for v in env_used.values() if v]
        return replace(resolved, secret_values=tuple(masked))

    def agent(self, agent_id: str | None = None) -> AgentSpec:
        if agent_id is None:
            if self.runtime.entry_agent:
                for agent in self.agents:
                    if agent.id == self.runtime.entry_agent:
                        return agent
            return self.agents[0]
        for agent in self.agents:
            if agent.id == agent_id:
                return agent
        raise KeyError(agent_id)


def _runtime(data: dict[str, Any]) -> Runtime:
    data = dict(data)
    if "direct_modules" in data:
        data["direct_modules"] = tuple(data["direct_modules"] or ())
    if "hooks" in data:
        data["hooks"] = tuple(data["hooks"] or ())
    known = Runtime.__dataclass_fields__
    return Runtime(**{k: v for k, v in data.items() if k in known})
