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


@dataclass(frozen=True)
class BrainSpec:
    provider: str  # openai | anthropic | scripted
    model: str = ""
    temperature: float = 0.2
    max_tokens: int | None = None
    timeout: float = 60.0
    config: dict[str, Any] = field(default_factory=dict)  # base_url, api_key, rules, ...


@dataclass(frozen=True)
class AgentSpec:
    id: str
    name: str = ""
    system_prompt: str = ""
    brain: BrainSpec = field(default_factory=lambda: BrainSpec(provider="scripted"))
    modules: tuple[str, ...] | None = None  # None: every module of the app
    max_turns: int | None = None  # None: runtime.max_turns


@dataclass(frozen=True)
class CapabilityRule:
    module: str
    actions: tuple[str, ...] | None = None  # None: every action of the module
    reason: str = ""


@dataclass(frozen=True)
class Capabilities:
    default_policy: str = "approve"  # auto | approve | block
    max_risk_level: str = "high"  # low | medium | high
    grant: tuple[CapabilityRule, ...] = ()
    approve: tuple[CapabilityRule, ...] = ()
    deny: tuple[CapabilityRule, ...] = ()


@dataclass(frozen=True)
class Runtime:
    max_turns: int = 20
    timeout: float = 300.0
    approval_timeout: int = 300
    max_tool_result_chars: int = 20_000
    context_window_messages: int = 60
    session_idle_seconds: int | None = None  # None: the daemon's default
    rate_limit_rpm: int | None = None  # None: the daemon's default


@dataclass(frozen=True)
class CompiledApp:
    app_id: str
    name: str
    version: str = "1.0"
    description: str = ""
    mode: str = "conversation"  # conversation | one_shot
    runtime: Runtime = field(default_factory=Runtime)
    agents: tuple[AgentSpec, ...] = ()
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)  # module id -> config
    capabilities: Capabilities | None = None  # None: dev mode, every tool auto
    security: dict[str, Any] = field(default_factory=dict)
    ui: dict[str, Any] = field(default_factory=dict)
    dev: dict[str, Any] = field(default_factory=dict)
    secret_refs: tuple[str, ...] = ()  # every KEY named by {{secret.KEY}}
    secret_values: tuple[str, ...] = ()  # plaintext values, in memory only (with_secrets)

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("secret_values")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompiledApp:
        def rule(d: dict) -> CapabilityRule:
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
                )
            )
        return cls(
            app_id=data["app_id"],
            name=data.get("name", data["app_id"]),
            version=str(data.get("version", "1.0")),
            description=data.get("description", ""),
            mode=data.get("mode", "conversation"),
            runtime=Runtime(**data.get("runtime", {})),
            agents=tuple(agents),
            modules=dict(data.get("modules", {})),
            capabilities=capabilities,
            security=dict(data.get("security", {})),
            ui=dict(data.get("ui", {})),
            dev=dict(data.get("dev", {})),
            secret_refs=tuple(data.get("secret_refs", ())),
        )

    # -- secrets -------------------------------------------------------------------------
    def missing_secrets(self, available: dict[str, str]) -> list[str]:
        return [key for key in self.secret_refs if key not in available]

    def with_secrets(self, values: dict[str, str]) -> CompiledApp:
        """A copy with every ``{{secret.KEY}}`` replaced; unknown keys stay as markers.

        Callers check :meth:`missing_secrets` first and raise an error naming the key when a
        part they need still holds a marker.
        """
        used = {k: v for k, v in values.items() if k in self.secret_refs}

        def sub(value: Any) -> Any:
            if isinstance(value, str):
                return SECRET_MARKER.sub(lambda m: used.get(m.group(1), m.group(0)), value)
            if isinstance(value, dict):
                return {k: sub(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return type(value)(sub(v) for v in value)
            return value

        resolved = CompiledApp.from_dict(sub(self.to_dict()))
        return replace(resolved, secret_values=tuple(v for v in used.values() if v))

    def agent(self, agent_id: str | None = None) -> AgentSpec:
        if agent_id is None:
            return self.agents[0]
        for agent in self.agents:
            if agent.id == agent_id:
                return agent
        raise KeyError(agent_id)
