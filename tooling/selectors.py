"""Reads: the per-app tool index, what an agent may see, meta-tool schemas, execution history."""

from __future__ import annotations

from typing import Any

from digitorn_site.errors import NotFoundError, ValidationError
from tooling import registry
from tooling.index import ToolIndex, ToolSpec, cached_index
from tooling.meta import CATEGORY_PAGE_SIZE, category_page, visible_tools
from tooling.meta import meta_tools as _meta_tools
from tooling.models import ToolExecution

__all__ = [
    "CATEGORY_PAGE_SIZE",
    "category_page",
    "meta_tools",
    "tool_executions",
    "tool_index_for",
    "tools_for_agent",
]


def tool_index_for(app: Any) -> ToolIndex:
    """Cached per app and compiled-app hash; blocked tools are excluded from everything it shows."""
    return cached_index(app)


def tools_for_agent(app: Any, agent_id: str) -> list[dict[str, Any]]:
    """``[{"name", "description", "parameters", "risk_level"}]`` of the tools this agent may call."""
    return [tool.schema() for tool in visible_tools(app, agent_id)]


def tool_specs_for_agent(app: Any, agent_id: str | None) -> list[ToolSpec]:
    return visible_tools(app, agent_id)


def meta_tools() -> list[dict[str, Any]]:
    return _meta_tools()


def tool_executions(*, app_id: str, limit: int = 100) -> list[ToolExecution]:
    return list(ToolExecution.objects.filter(app_id=app_id).order_by("-id")[:limit])


# -- discovery payloads (DESIGN §7: the original Digitorn's names) ------------------------------

_JSON_TYPE_NAMES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "array": "list",
                    "object": "dict", "null": "None"}

def params_summary(parameters: dict[str, Any]) -> str:
    """The original's one-line signature: ``"path: str, limit?: int"`` (optional ones marked ``?``)."""
    props = parameters.get("properties") if isinstance(parameters, dict) else None
    if not isinstance(props, dict):
        return ""
    required = set(parameters.get("required") or ())
    parts = []
    for name, schema in props.items():
        kind = schema.get("type", "any") if isinstance(schema, dict) else "any"
        if isinstance(kind, list):
            kind = "|".join(_JSON_TYPE_NAMES.get(k, str(k)) for k in kind)
        else:
            kind = _JSON_TYPE_NAMES.get(kind, str(kind))
        parts.append(f"{name}{'' if name in required else '?'}: {kind}")
    return ", ".join(parts)


def _examples(tool: ToolSpec) -> list[Any]:
    """Examples a module declares on its action (``ActionSpec.examples``), else none."""
    cls = registry.all_modules().get(tool.module)
    spec = getattr(cls, "actions", {}).get(tool.action) if cls is not None else None
    return list(getattr(spec, "examples", ()) or ())


def _category_item(category: Any, tool_count: int | None = None) -> dict[str, Any]:
    return {
        "id": category.name,
        "summary": category.description,
        "tool_count": len(category.tools) if tool_count is None else tool_count,
    }


def tool_search_result(app: Any, *, query: str, max_results: int = 10) -> dict[str, Any]:
    """Best first; an empty query is an empty answer (the original's), not an error."""
    if not query or not query.strip():
        return {"query": query, "mode": cached_index(app).mode, "count": 0, "tools": []}
    index = cached_index(app)
    try:
        hits = index.search(query, max_results)
    except ValueError as exc:
        raise ValidationError(f"query: {exc}.")
    return {
        "query": query,
        "mode": index.mode,
        "count": len(hits),
        "tools": [
            {
                "name": tool.name,
                "description": tool.description,
                "relevance": score,
                "risk_level": tool.risk_level,
                "tags": list(tool.tags),
                "params_summary": params_summary(tool.parameters),
                "parameters": tool.parameters,
            }
            for tool, score in hits
        ],
    }


def tool_categories_result(app: Any) -> dict[str, Any]:
    index = cached_index(app)
    return {
        "categories": [_category_item(category) for category in index.categories.values()],
        "total_categories": index.total_categories,
        "total_tools": index.total_tools,
    }


def tool_category_result(app: Any, *, category: str, page: int = 1) -> dict[str, Any]:
    found = cached_index(app).category(category)
    tools, total_pages = category_page(list(found.tools), page=page)
    if page > total_pages:
        raise NotFoundError(
            f"page: category '{found.name}' has {total_pages} page(s) of {CATEGORY_PAGE_SIZE} tools; "
            f"page {page} does not exist."
        )
    return {
        "category": found.name,
        "summary": found.description,
        "tools": [tool.summary() for tool in tools],
        "page": page,
        "total_pages": total_pages,
        "total_tools": len(found.tools),
    }


def tool_detail_result(app: Any, *, tool_name: str) -> dict[str, Any]:
    tool = cached_index(app).get(tool_name)
    return {**tool.detail(), "examples": _examples(tool)}


def tool_index_result(app: Any) -> dict[str, Any]:
    """``GET /index``: every category with its tools, each with ``params_schema`` (the original's name)."""
    index = cached_index(app)
    categories = []
    for category in index.categories.values():
        tools = []
        for tool in category.tools:
            detail = tool.detail()
            tools.append(
                {
                    "name": tool.name,
                    "description": tool.description,
                    "aliases": detail["aliases"],
                    "tags": detail["tags"],
                    "side_effects": detail["side_effects"],
                    "risk_level": tool.risk_level,
                    "params_schema": tool.parameters,
                    "irreversible": tool.irreversible,
                    "policy": tool.policy,
                }
            )
        categories.append({**_category_item(category), "tools": tools})
    return {
        "total_tools": index.total_tools,
        "total_categories": index.total_categories,
        "tool_injection_mode": index.tool_injection_mode,  # what the engine gives the agents
        "categories": categories,
    }

