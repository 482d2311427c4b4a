"""``GET /api/modules``: the tool modules this daemon provides (the original's module catalog)."""

from __future__ import annotations

from rest_framework.response import Response

from digitorn_site.api.base import ApiView
from tooling.registry import MODULE_ALIASES, all_modules


def module_catalog() -> list[dict]:
    out = []
    for module_id, cls in all_modules().items():
        if module_id in MODULE_ALIASES:
            continue  # an alias (bash → shell) is the same module
        actions = sorted(cls.actions) if isinstance(getattr(cls, "actions", None), dict) else []
        out.append({
            "module_id": module_id,
            "name": module_id,
            "description": cls.description,
            "actions": actions,
            "action_count": len(actions),
            "aliases": sorted(a for a, target in MODULE_ALIASES.items() if target == module_id),
        })
    return out


class ModuleListView(ApiView):
    required_scope = "apps:read"

    def get(self, request):
        modules = module_catalog()
        # `modules` also at the top level, beside the envelope: the original answered the bare
        # `{modules: [...]}` and its clients read it there (additive; `data` holds the same list).
        return Response({"success": True, "data": {"modules": modules, "total": len(modules)}, "error": None,
                         "modules": modules})
