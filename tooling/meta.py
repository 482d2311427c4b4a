"""Meta-tools: how an agent with too many tools to list finds and calls them.

``search_tools``, ``get_tool``, ``list_categories`` and ``browse_category`` answer from the app's
index restricted to what this agent may use (its ``modules:`` list and the policy);
``execute_tool`` goes through :func:`tooling.services.tool_invoke`, so the same gate applies.
Mistakes an agent makes (an unknown tool, bad params) come back as ``error`` outcomes it can read
and correct, never as exceptions.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import connection

from approvals.policy import resolve_policy, resolve_policy_detail
from digitorn_site.errors import DigitornError
from tooling import ports, registry
from tooling.index import ToolSpec, cached_index
from tooling.services import ToolOutcome, tool_invoke

CATEGORY_PAGE_SIZE = 20
RUN_PARALLEL_MAX = 50  # the original's bound on run_parallel's actions
RUN_PARALLEL_THREADS = 8
# agent_spawn actions that wait for runs: the engine suspends the one call that asks, so they
# cannot share a run_parallel call (agent_spawn.run_parallel runs several agents at once).
_WAITING_ACTIONS = {"agent_spawn.agent", "agent_spawn.wait", "agent_spawn.run_parallel"}
META_TOOL_NAMES = registry.DISCOVERY_META_TOOL_NAMES


def meta_tools() -> list[dict[str, Any]]:
    return [
        {
            "name": "search_tools",
            "description": "Find tools by what they do (hybrid keyword + semantic search); returns names and schemas.",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {
                        "type": "string",
                        "minLength": 1,
                        "description": "What the tool should do, e.g. 'read a file'.",
                    },
                    "max_results": {"type": "integer", "minimum": 1, "maximum": 50, "default": 10},
                },
                "required": ["query"],
                "additionalProperties": False,
            },
            "risk_level": "low",
        },
        {
            "name": "get_tool",
            "description": "The full schema of one tool (parameters, side effects, risk).",
            "parameters": {
                "type": "object",
                "properties": {"name": {"type": "string", "description": "module.action"}},
                "required": ["name"],
                "additionalProperties": False,
            },
            "risk_level": "low",
        },
        {
            "name": "execute_tool",
            "description": "Run a tool by name with its parameters (the app's security policy applies).",
            "parameters": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "description": "module.action"},
                    "params": {"type": "object", "default": {}},
                },
                "required": ["name"],
                "additionalProperties": False,
            },
            "risk_level": "low",
        },
        {
            "name": "run_parallel",
            "description": "Run several tools at once (independent calls); results in the order given, one "
            "failure does not stop the others. Tools that need a human's approval must be called on their own.",
            "parameters": {
                "type": "object",
                "properties": {
                    "actions": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": RUN_PARALLEL_MAX,
                        "items": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string", "description": "module.action"},
                                "params": {"type": "object", "default": {}},
                            },
                            "required": ["name"],
                        },
                    },
                },
                "required": ["actions"],
                "additionalProperties": False,
            },
            "risk_level": "low",
        },
        {
            "name": "list_categories",
            "description": "The tool categories (modules) available, with their tool counts.",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
            "risk_level": "low",
        },
        {
            "name": "browse_category",
            "description": f"The tools of one category, {CATEGORY_PAGE_SIZE} per page.",
            "parameters": {
                "type": "object",
                "properties": {
                    "category": {"type": "string"},
                    "page": {"type": "integer", "minimum": 1, "default": 1},
                },
                "required": ["category"],
                "additionalProperties": False,
            },
            "risk_level": "low",
        },
    ]


def visible_tools(app: Any, agent_id: str | None) -> list[ToolSpec]:
    """The app's visible tools, further restricted by the agent's modules list and policy."""
    tools = cached_index(app).tools
    if agent_id is None:
        return list(tools)
    return [t for t in tools if resolve_policy(app, agent_id, t.module, t.action, t.risk_level) != "block"]


def category_page(tools: list[ToolSpec], *, page: int) -> tuple[list[ToolSpec], int]:
    total_pages = max(1, math.ceil(len(tools) / CATEGORY_PAGE_SIZE))
    start = (page - 1) * CATEGORY_PAGE_SIZE
    return tools[start : start + CATEGORY_PAGE_SIZE], total_pages


def _answer(app: Any, agent_id: str | None, name: str, params: dict) -> Any:
    index = cached_index(app)
    allowed = {t.name for t in visible_tools(app, agent_id)}
    if name == "search_tools":
        query = params.get("query")
        max_results = params.get("max_results", 10)
        if not isinstance(query, str) or not query.strip():
            raise ValueError("params.query: say what the tool should do, e.g. 'read file'.")
        if isinstance(max_results, bool) or not isinstance(max_results, int) or not 1 <= max_results <= 50:
            raise ValueError("params.max_results: a whole number from 1 to 50.")
        hits = [(t, s) for t, s in index.search(query, max(max_results, 50)) if t.name in allowed][
            :max_results
        ]
        return {
            "query": query,
            "mode": index.mode,
            "count": len(hits),
            "tools": [{**t.schema(), "relevance": score, "tags": list(t.tags)} for t, score in hits],
        }
    if name == "get_tool":
        spec = index.get(str(params.get("name", "")))
        if spec.name not in allowed:
            raise ValueError(f"params.name: '{spec.name}' is not available to this agent.")
        return spec.detail()
    if name == "list_categories":
        counts: dict[str, int] = {}
        for tool in visible_tools(app, agent_id):
            counts[tool.module] = counts.get(tool.module, 0) + 1
        categories = [
            {"name": c.name, "description": c.description, "tool_count": counts[c.name]}
            for c in index.categories.values()
            if c.name in counts
        ]
        return {
            "categories": categories,
            "total_categories": len(categories),
            "total_tools": sum(counts.values()),
        }
    if name == "browse_category":
        category = index.category(str(params.get("category", "")))
        page = params.get("page", 1)
        if isinstance(page, bool) or not isinstance(page, int) or page < 1:
            raise ValueError("params.page: a whole number from 1.")
        tools = [t for t in category.tools if t.name in allowed]
        if not tools:
            raise ValueError(f"params.category: '{category.name}' has no tool this agent may use.")
        shown, total_pages = category_page(tools, page=page)
        if page > total_pages:
            raise ValueError(f"params.page: category '{category.name}' has {total_pages} page(s).")
        return {
            "category": category.name,
            "description": category.description,
            "tools": [t.summary() for t in shown],
            "page": page,
            "total_pages": total_pages,
            "total_tools": len(tools),
        }
    raise ValueError(f"Unknown meta-tool '{name}'; meta-tools: {', '.join(META_TOOL_NAMES)}.")


def meta_tool_invoke(
    *,
    app: Any,
    name: str,
    params: dict,
    caller: str,
    principal: str,
    session_id: str | None = None,
    agent_id: str | None = None,
    origin_ref: str = "",
    approval_request_id: str | None = None,
    cancel_check: Callable[[], bool] | None = None,
) -> Any:
    params = params if isinstance(params, dict) else {}
    if name == "run_parallel":
        return _run_parallel(app=app, params=params, caller=caller, principal=principal, session_id=session_id,
                             agent_id=agent_id, origin_ref=origin_ref, cancel_check=cancel_check)
    if name == "execute_tool":
        target = params.get("name")
        try:
            return tool_invoke(
                app=app,
                tool_name=str(target or ""),
                params=params.get("params") or {},
                caller=caller,
                principal=principal,
                session_id=session_id,
                agent_id=agent_id,
                origin="agent",
                origin_ref=origin_ref,
                approval_request_id=approval_request_id,
                cancel_check=cancel_check,
            )
        except DigitornError as exc:
            return ToolOutcome(
                status="error", tool=str(target or "execute_tool"), success=False, error=exc.message
            )
    started = time.monotonic()
    try:
        data = _answer(app, agent_id, name, params)
        outcome = ToolOutcome(status="ok", tool=name, success=True, data=data)
    except (ValueError, DigitornError) as exc:
        outcome = ToolOutcome(
            status="error", tool=name, success=False, error=getattr(exc, "message", str(exc))
        )
    outcome.duration_ms = (time.monotonic() - started) * 1000
    return outcome


def _run_parallel(
    *,
    app: Any,
    params: dict,
    caller: str,
    principal: str,
    session_id: str | None,
    agent_id: str | None,
    origin_ref: str,
    cancel_check: Callable[[], bool] | None,
) -> Any:
    """``run_parallel{actions: [{name, params}]}``: each action through ``tool_invoke`` (the gate
    applies to each target), at most ``RUN_PARALLEL_THREADS`` at a time; ``{results, total,
    succeeded, failed}`` with results in input order, each ``{name, success, data, error, status}``."""
    started = time.monotonic()
    actions = params.get("actions")
    if not isinstance(actions, list) or not 1 <= len(actions) <= RUN_PARALLEL_MAX or set(params) - {"actions"}:
        return ToolOutcome(status="error", tool="run_parallel", success=False,
                           error=f"params.actions: a list of 1 to {RUN_PARALLEL_MAX} {{name, params}} objects.")
    index = cached_index(app)

    def refuse(position: int, action: Any) -> str | None:
        if not isinstance(action, dict) or not isinstance(action.get("name"), str) or not action["name"]:
            return f"actions[{position}]: an object {{name: 'module.action', params: {{...}}}}"
        if not isinstance(action.get("params", {}), dict):
            return f"actions[{position}].params: an object"
        if action["name"] in (*META_TOOL_NAMES, "run_parallel"):
            return f"actions[{position}]: '{action['name']}' is a meta-tool; run_parallel runs module tools"
        try:
            spec = index.resolve(action["name"])
        except DigitornError as exc:
            return exc.message
        if spec.name in _WAITING_ACTIONS:
            return f"'{spec.name}' waits for delegated agents: call it on its own (agent_spawn.run_parallel " \
                   "runs several agents at once)"
        if resolve_policy_detail(app, agent_id, spec.module, spec.action, spec.risk_level).policy == "approve":
            return f"'{spec.name}' needs a human's approval: call it on its own, not inside run_parallel"
        return None

    delegation = ports.delegator()

    def one(position: int, action: dict) -> dict[str, Any]:
        # An agent_spawn.spawn among the actions is told apart from its siblings by its position
        # (a delegation is found again by its call id after a crash).
        current = delegation.CURRENT
        outer = current.get()
        token = current.set(
            delegation.DelegationCall(turn_pk=outer.turn_pk, call_id=f"{outer.call_id}/{position}", loop=outer.loop)
        ) if outer is not None else None
        try:
            outcome = tool_invoke(app=app, tool_name=action["name"], params=action.get("params") or {},
                                  caller=caller, principal=principal, session_id=session_id, agent_id=agent_id,
                                  origin="agent", origin_ref=f"{origin_ref}#{position}", cancel_check=cancel_check)
            return {"name": outcome.tool, "status": outcome.status, "success": outcome.success,
                    "data": outcome.data, "error": outcome.error or None}
        except DigitornError as exc:
            return {"name": action["name"], "status": "error", "success": False, "data": None, "error": exc.message}
        except Exception as exc:  # noqa: BLE001 - one broken action must not sink the others
            return {"name": action["name"], "status": "error", "success": False, "data": None,
                    "error": f"{type(exc).__name__}: {exc}"}
        finally:
            if token is not None:
                current.reset(token)
            if threaded:
                connection.close()  # a pool thread must not keep its own database connection

    results: list[dict[str, Any] | None] = [None] * len(actions)
    runnable: list[tuple[int, dict]] = []
    for position, action in enumerate(actions):
        why = refuse(position, action)
        if why is None:
            runnable.append((position, action))
        else:
            name = action.get("name") if isinstance(action, dict) else None
            results[position] = {"name": name, "status": "error", "success": False, "data": None, "error": why}
    threaded = len(runnable) > 1
    if threaded:
        with ThreadPoolExecutor(max_workers=min(RUN_PARALLEL_THREADS, len(runnable))) as pool:
            futures = [(p, pool.submit(contextvars.copy_context().run, one, p, a)) for p, a in runnable]
            for position, future in futures:
                results[position] = future.result()
    else:
        for position, action in runnable:
            results[position] = one(position, action)
    succeeded = sum(1 for r in results if r and r["success"])
    outcome = ToolOutcome(status="ok", tool="run_parallel", success=True, data={
        "results": results, "total": len(results), "succeeded": succeeded, "failed": len(results) - succeeded,
    })
    outcome.duration_ms = (time.monotonic() - started) * 1000
    return outcome
