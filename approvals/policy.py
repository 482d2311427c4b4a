"""Capability policy: one pure function of (compiled app, agent, tool) → ``auto | approve | block``.

Order (DESIGN.md §5), first match wins:

1. The agent's ``modules:`` list: a module the agent does not list is blocked for that agent, and
   so is an action a granular entry (``{shell: [bash]}``) does not list (applies in dev mode too;
   ``agent_id=None`` — a direct API call — has no agent restriction; an agent id the app does not
   declare is blocked).
1b. ``tools.modules.X.constraints``: an action outside ``allowed_actions`` or in
   ``blocked_actions`` → ``block`` (hidden from the index).
2. No ``capabilities:`` block → dev mode, every tool ``auto``.
2b. ``hidden_modules`` / ``hidden_actions`` → ``block`` (this daemon has no setup/hook callers yet,
   so hidden means invisible and not callable).
3. ``deny`` rule matching the tool → ``block``.
4. ``approve`` rule matching → ``approve``.
5. ``grant`` rule matching → ``auto``; then the ``memory`` module → ``auto`` (the original's
   working-memory tools are silent and auto-allowed; a deny or approve rule still applies).
6. The module has ``grant`` rules and all of them carry an ``actions`` list that omits this action
   → ``block`` (a grant with an actions list is an allow-list for its module).
7. Risk above ``max_risk_level`` → ``block`` (steps 4-5 already let explicitly listed tools
   through: a rule naming the module without ``actions`` lists every action of it).
8. ``default_policy`` (default ``approve``).

A rule matches when its module is the tool's module (or ``*``) and it has no ``actions`` or lists
the action (or ``*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POLICIES = ("auto", "approve", "block")
RISK_ORDER = {"low": 0, "medium": 1, "high": 2}
MEMORY_MODULE = "memory"


@dataclass(frozen=True)
class PolicyDecision:
    policy: str
    reason: str
    rule: str  # which step decided: agent_modules, dev_mode, deny, approve, grant, allow_list, max_risk, default


# Virtual modules answer to their parent's name too: rules and agent module lists naming ``mcp``
# cover every ``mcp_<server>`` (each MCP server's tools), as in the original.
VIRTUAL_PARENTS = {"mcp_": "mcp"}


def _names(module: str) -> tuple[str, ...]:
    for prefix, parent in VIRTUAL_PARENTS.items():
        if module.startswith(prefix) and len(module) > len(prefix):
            return (module, parent)
    return (module,)


def _matches(rule: Any, module: str, action: str) -> bool:
    if rule.module != "*" and rule.module not in _names(module):
        return False
    return rule.actions is None or action in rule.actions or "*" in rule.actions


def resolve_policy_detail(
    app: Any, agent_id: str | None, module: str, action: str, risk_level: str
) -> PolicyDecision:
    tool = f"{module}.{action}"
    if agent_id is not None:
        agent = next((a for a in app.agents if a.id == agent_id), None)
        if agent is None:
            return PolicyDecision("block", f"the app declares no agent '{agent_id}'", "agent_modules")
        if agent.modules is not None and not any(name in agent.modules for name in _names(module)):
            return PolicyDecision(
                "block", f"agent '{agent_id}' may only use modules {list(agent.modules)}", "agent_modules"
            )
        only = (getattr(agent, "module_actions", None) or {}).get(module)
        if only and action not in only and "*" not in only:
            return PolicyDecision(
                "block", f"agent '{agent_id}' may only use {module} actions {list(only)}", "agent_modules"
            )
    limits = (getattr(app, "module_constraints", None) or {}).get(module) or {}
    allowed_actions = limits.get("allowed_actions")
    if allowed_actions and action not in allowed_actions:
        return PolicyDecision(
            "block", f"tools.modules.{module}.constraints.allowed_actions is {list(allowed_actions)}", "constraints"
        )
    if action in (limits.get("blocked_actions") or ()):
        return PolicyDecision(
            "block", f"{tool} is in tools.modules.{module}.constraints.blocked_actions", "constraints"
        )
    caps = app.capabilities
    if caps is None:
        return PolicyDecision("auto", "no capabilities block (dev mode)", "dev_mode")
    if module in (getattr(caps, "hidden_modules", None) or ()):
        return PolicyDecision("block", f"module {module} is in capabilities.hidden_modules", "hidden")
    for rule in getattr(caps, "hidden_actions", None) or ():
        if _matches(rule, module, action):
            return PolicyDecision("block", f"{tool} is in capabilities.hidden_actions", "hidden")
    for rule in caps.deny:
        if _matches(rule, module, action):
            return PolicyDecision("block", rule.reason or f"{tool} is denied by capabilities.deny", "deny")
    for rule in caps.approve:
        if _matches(rule, module, action):
            return PolicyDecision(
                "approve", rule.reason or f"{tool} needs approval (capabilities.approve)", "approve"
            )
    for rule in caps.grant:
        if _matches(rule, module, action):
            return PolicyDecision("auto", rule.reason or f"{tool} is granted", "grant")
    if module == MEMORY_MODULE:
        # The original's working-memory tools are silent and auto-allowed (only deny stops them).
        return PolicyDecision("auto", "memory tools are auto-allowed (working memory)", "memory")
    module_grants = [r for r in caps.grant if r.module == module]
    if module_grants and all(r.actions is not None for r in module_grants):
        allowed = sorted({a for r in module_grants for a in r.actions})
        return PolicyDecision(
            "block", f"capabilities.grant allows only {allowed} of module '{module}'", "allow_list"
        )
    if RISK_ORDER.get(risk_level, 2) > RISK_ORDER.get(caps.max_risk_level, 2):
        return PolicyDecision(
            "block",
            f"{tool} is {risk_level} risk, above capabilities.max_risk_level ({caps.max_risk_level}); "
            "list it under grant or approve to allow it",
            "max_risk",
        )
    policy = caps.default_policy if caps.default_policy in POLICIES else "approve"
    return PolicyDecision(policy, f"capabilities.default_policy is {policy}", "default")


def resolve_policy(app: Any, agent_id: str | None, module: str, action: str, risk_level: str) -> str:
    return resolve_policy_detail(app, agent_id, module, action, risk_level).policy
