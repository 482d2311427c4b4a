"""Reads: the per-app tool index, what an agent may see, meta-tool schemas, execution history."""

from __future__ import annotations

from typing import Any

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


# -- discovery payloads (DESIGN §7) -------------------------------------------------------------


def tool_search_result(app: Any, *, query: str, max_results: int = 10) -> dict[str, Any]:
    from digitorn_site.errors import ValidationError

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
                "parameters": tool.parameters,
            }
            for tool, score in hits
        ],
    }


def tool_categories_result(app: Any) -> dict[str, Any]:
    index = cached_index(app)
    return {
        "categories": [category.summary() for category in index.categories.values()],
        "total_categories": index.total_categories,
        "total_tools": index.total_tools,
    }


def tool_category_result(app: Any, *, category: str, page: int = 1) -> dict[str, Any]:
    from digitorn_site.errors import NotFoundError

    found = cached_index(app).category(category)
    tools, total_pages = category_page(list(found.tools), page=page)
    if page > total_pages:
        raise NotFoundError(
            f"page: category '{found.name}' has {total_pages} page(s) of {CATEGORY_PAGE_SIZE} tools; "
            f"page {page} does not exist."
        )
    return {
        "category": found.name,
        "description": found.description,
        "tools": [tool.summary() for tool in tools],
        "page": page,
        "total_pages": total_pages,
        "total_tools": len(found.tools),
    }


def tool_detail_result(app: Any, *, tool_name: str) -> dict[str, Any]:
    return cached_index(app).get(tool_name).detail()
