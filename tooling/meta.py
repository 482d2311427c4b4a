"""Meta-tools: how an agent with too many tools to list finds and calls them.

``search_tools``, ``get_tool``, ``list_categories`` and ``browse_category`` answer from the app's
index restricted to what this agent may use (its ``modules:`` list and the policy);
``execute_tool`` goes through :func:`tooling.services.tool_invoke`, so the same gate applies.
Mistakes an agent makes (an unknown tool, bad params) come back as ``error`` outcomes it can read
and correct, never as exceptions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from approvals.policy import resolve_policy
from digitorn_site.errors import DigitornError
from tooling import registry
from tooling.index import ToolSpec, cached_index

CATEGORY_PAGE_SIZE = 20
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
    from tooling.services import ToolOutcome, tool_invoke

    params = params if isinstance(params, dict) else {}
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
