"""``GET /api/apps/{id}/diagnostics``: what an operator checks when an app misbehaves, in one answer.

The compiler's warnings (accepted keys not acted on), the agents and their models, the modules and
tools each agent can reach, the secrets the manifest names and which are not set, and a status:
``healthy`` (nothing to fix), ``degraded`` (the app cannot answer until something is set: a missing
secret, no agent). Secret values never appear; only their names.
"""

from __future__ import annotations

from apps_registry import selectors
from digitorn_site.api.base import ApiView
from digitorn_site.api.envelope import ok
from tooling.selectors import tools_for_agent


def app_diagnostics(app_id: str) -> dict:
    row = selectors.app_get(app_id=app_id)  # 404 when not deployed
    compiled = selectors.app_compiled(app_id=app_id)
    stored = set(selectors.secret_keys(app_id=app_id))
    missing = [key for key in compiled.secret_refs if key not in stored]
    agents = []
    for agent in compiled.agents:
        try:
            tool_count = len(tools_for_agent(compiled, agent.id))
            tools_error = None
        except Exception as exc:  # noqa: BLE001 - a diagnostic reports what fails, it does not fail
            tool_count, tools_error = 0, str(exc)[:500]
        agents.append({
            "id": agent.id,
            "role": agent.role,
            "provider": agent.brain.provider,
            "model": getattr(agent.brain, "model", ""),
            "modules": list(agent.modules) if agent.modules is not None else list(compiled.modules),
            "tool_count": tool_count,
            "tools_error": tools_error,
        })
    problems = []
    if not compiled.agents:
        problems.append("the app declares no agents: it cannot answer messages")
    if missing:
        problems.append(f"secrets named by the manifest but not set: {', '.join(missing)}")
    problems.extend(f"agent {a['id']}: its tools cannot be listed: {a['tools_error']}" for a in agents if a["tools_error"])
    return {
        "app_id": app_id,
        "status": "degraded" if problems else "healthy",
        "version": compiled.version,
        "mode": compiled.mode,
        "deployed_at": row.deployed_at.timestamp(),
        "agents": agents,
        "modules": sorted(compiled.modules),
        "hooks": [h.get("id") for h in compiled.runtime.hooks],
        "secrets": {"referenced": list(compiled.secret_refs), "missing": missing},
        "warnings": list(compiled.warnings),
        "problems": problems,
    }


class AppDiagnosticsView(ApiView):
    required_scope = "apps:read"

    def get(self, request, app_id: str):
        return ok(app_diagnostics(app_id))
