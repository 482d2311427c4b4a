"""The capability policy as a table: (capabilities, agent, tool, risk) → auto | approve | block."""

from __future__ import annotations

import pytest

from approvals.policy import resolve_policy, resolve_policy_detail
from apps_registry.manifest.compiled import AgentSpec, Capabilities, CapabilityRule, CompiledApp


def rule(spec: str, reason: str = "") -> CapabilityRule:
    """"shell" → the whole module; "shell.run,other" → those actions."""
    module, _, actions = spec.partition(".")
    return CapabilityRule(module=module, actions=tuple(actions.split(",")) if actions else None, reason=reason)


def caps(*, grant=(), approve=(), deny=(), default="approve", max_risk="high") -> Capabilities:
    return Capabilities(
        default_policy=default,
        max_risk_level=max_risk,
        grant=tuple(rule(r) for r in grant),
        approve=tuple(rule(r) for r in approve),
        deny=tuple(rule(r) for r in deny),
    )


AGENTS = (
    AgentSpec(id="main"),
    AgentSpec(id="reader", modules=("filesystem",)),
    AgentSpec(id="nobody", modules=()),
)

DEV = None
STRICT = caps(grant=["filesystem"], approve=["shell"], deny=["filesystem.delete"], default="block")

# (capabilities, agent, tool, risk, expected)
TABLE = [
    # 1-4: no capabilities block = dev mode, everything auto (agents' module lists still apply)
    (DEV, None, "filesystem.read", "low", "auto"),
    (DEV, None, "shell.run", "high", "auto"),
    (DEV, "main", "database.execute", "high", "auto"),
    (DEV, "reader", "shell.run", "high", "block"),
    # 5-9: deny > approve > grant
    (caps(deny=["shell"], approve=["shell"], grant=["shell"]), None, "shell.run", "high", "block"),
    (caps(approve=["shell"], grant=["shell"]), None, "shell.run", "high", "approve"),
    (caps(grant=["shell"]), None, "shell.run", "high", "auto"),
    (caps(deny=["filesystem.delete"], grant=["filesystem"]), None, "filesystem.delete", "high", "block"),
    (caps(deny=["filesystem.delete"], grant=["filesystem"]), None, "filesystem.read", "low", "auto"),
    # 10-12: approve with an action list only catches those actions
    (caps(approve=["filesystem.write,delete"], grant=["filesystem"]), None, "filesystem.write", "medium", "approve"),
    (caps(approve=["filesystem.write,delete"], grant=["filesystem"]), None, "filesystem.read", "low", "auto"),
    (caps(approve=["filesystem.delete"], default="auto"), None, "filesystem.read", "low", "auto"),
    # 13-16: a grant with an actions list is an allow-list for its module
    (caps(grant=["filesystem.read,ls"], default="auto"), None, "filesystem.read", "low", "auto"),
    (caps(grant=["filesystem.read,ls"], default="auto"), None, "filesystem.write", "medium", "block"),
    (caps(grant=["filesystem.read,ls"], approve=["filesystem.write"]), None, "filesystem.write", "medium", "approve"),
    (caps(grant=["filesystem.read", "filesystem"]), None, "filesystem.write", "medium", "auto"),
    # 17: the allow-list of one module says nothing about other modules
    (caps(grant=["filesystem.read"], default="auto"), None, "memory.recall", "low", "auto"),
    # 18-23: max_risk_level blocks what is above it unless explicitly listed
    (caps(max_risk="medium", default="auto"), None, "shell.run", "high", "block"),
    (caps(max_risk="medium", default="auto"), None, "filesystem.write", "medium", "auto"),
    (caps(max_risk="low", default="auto"), None, "filesystem.write", "medium", "block"),
    (caps(max_risk="low", grant=["filesystem.write"]), None, "filesystem.write", "medium", "auto"),
    (caps(max_risk="low", approve=["shell"]), None, "shell.run", "high", "approve"),
    # memory is auto-allowed as in the original (working memory), unless denied or under approve.
    (caps(max_risk="low", default="approve"), None, "memory.recall", "low", "auto"),
    (caps(max_risk="low", default="approve"), None, "shell.run", "low", "approve"),
    (caps(deny=["memory"], default="auto"), None, "memory.remember", "low", "block"),
    # 24-27: default_policy for everything no rule names (default approve)
    (Capabilities(), None, "http.get", "low", "approve"),
    (caps(default="auto"), None, "http.get", "low", "auto"),
    (caps(default="block"), None, "http.get", "low", "block"),
    (caps(default="nonsense"), None, "http.get", "low", "approve"),
    # 28-33: a strict app, agent by agent
    (STRICT, None, "filesystem.read", "low", "auto"),
    (STRICT, None, "filesystem.delete", "high", "block"),
    (STRICT, None, "shell.run", "high", "approve"),
    (STRICT, None, "http.get", "low", "block"),
    (STRICT, "reader", "filesystem.read", "low", "auto"),
    (STRICT, "reader", "shell.run", "high", "block"),
    # 34-36: per-agent module lists restrict further; an unknown agent gets nothing
    (caps(grant=["memory"]), "nobody", "memory.recall", "low", "block"),
    (caps(grant=["memory"]), "main", "memory.recall", "low", "auto"),
    (caps(grant=["memory"]), "ghost", "memory.recall", "low", "block"),
    # 37-39: wildcards
    (caps(deny=["*"], grant=["filesystem"]), None, "filesystem.read", "low", "block"),
    (caps(grant=["filesystem.*"]), None, "filesystem.delete", "high", "auto"),
    (caps(approve=["*"], default="auto"), None, "memory.recall", "low", "approve"),
    # 40: an unknown risk level counts as high
    (caps(max_risk="medium", default="auto"), None, "custom.thing", "unknown", "block"),
]


@pytest.mark.parametrize(("capabilities", "agent", "tool", "risk", "expected"), TABLE, ids=[str(i + 1) for i in range(len(TABLE))])
def test_policy_table(capabilities, agent, tool, risk, expected):
    app = CompiledApp(app_id="p", name="p", agents=AGENTS, capabilities=capabilities)
    module, action = tool.split(".")
    assert resolve_policy(app, agent, module, action, risk) == expected


def test_table_has_at_least_25_cases_covering_every_outcome():
    assert len(TABLE) >= 25
    assert {row[-1] for row in TABLE} == {"auto", "approve", "block"}


def test_decisions_carry_a_reason_from_the_manifest_or_the_rule():
    app = CompiledApp(
        app_id="p",
        name="p",
        agents=AGENTS,
        capabilities=Capabilities(approve=(rule("shell", reason="commands change the machine"),), max_risk_level="medium"),
    )
    decision = resolve_policy_detail(app, None, "shell", "run", "high")
    assert (decision.policy, decision.reason, decision.rule) == ("approve", "commands change the machine", "approve")
    risky = resolve_policy_detail(app, None, "database", "execute", "high")
    assert risky.policy == "block" and "max_risk_level" in risky.reason and risky.rule == "max_risk"
    agent = resolve_policy_detail(app, "reader", "shell", "run", "high")
    assert agent.rule == "agent_modules" and "reader" in agent.reason
