"""memory: per-session notes an agent keeps between turns (rows of ``tooling.MemoryEntry``).

Calls without a session (direct API execution) share one app-wide scratch space (session id "").
Config: ``max_entries`` per session (default 500), ``max_value_chars`` (default 20000).
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from tooling.models import MemoryEntry
from tooling.modules.base import Module, ToolError, action

DEFAULT_MAX_ENTRIES = 500
DEFAULT_MAX_VALUE = 20_000


class MemoryModule(Module):
    id = "memory"
    description = "Remember facts for the rest of the session, recall and forget them."
    config_schema = {
        "type": "object",
        "properties": {
            "max_entries": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_ENTRIES},
            "max_value_chars": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_VALUE},
        },
        "additionalProperties": False,
    }

    def _rows(self):
        return MemoryEntry.objects.filter(
            app_id=self.context.app_id, session_id=self.context.session_id or ""
        )

    @action(
        description="Store a value under a key for this session (replaces an earlier value of the key).",
        parameters={
            "properties": {
                "key": {"type": "string", "minLength": 1, "maxLength": 200},
                "value": {"type": "string"},
            },
            "required": ["key", "value"],
        },
        side_effects=("state_mutation",),
        aliases=("store", "save_note", "note", "memorize", "retenir", "memoriser", "souvenir"),
        tags=("memory", "notes", "session"),
    )
    def remember(self, key: str, value: str) -> dict[str, Any]:
        max_value = int(self.config.get("max_value_chars") or DEFAULT_MAX_VALUE)
        if len(value) > max_value:
            raise ToolError(
                f"params.value: {len(value)} characters, above memory.max_value_chars ({max_value})."
            )
        max_entries = int(self.config.get("max_entries") or DEFAULT_MAX_ENTRIES)
        with transaction.atomic():
            rows = self._rows()
            if not rows.filter(key=key).exists() and rows.count() >= max_entries:
                raise ToolError(
                    f"params.key: this session already holds {max_entries} memories; forget some first."
                )
            _, created = MemoryEntry.objects.update_or_create(
                app_id=self.context.app_id,
                session_id=self.context.session_id or "",
                key=key,
                defaults={"value": value},
            )
        return {"key": key, "stored": True, "replaced": not created}

    @action(
        description="Recall the value of a key, or every memory of the session whose key or value contains "
        "'query' (all of them when both are omitted).",
        parameters={"properties": {"key": {"type": "string"}, "query": {"type": "string"}}},
        aliases=("retrieve", "remember_what", "get_note", "notes", "rappeler", "recuperer_memoire"),
        tags=("memory", "notes", "session"),
    )
    def recall(self, key: str | None = None, query: str | None = None) -> dict[str, Any]:
        rows = self._rows()
        if key:
            entry = rows.filter(key=key).first()
            if entry is None:
                known = list(rows.values_list("key", flat=True)[:50])
                raise ToolError(f"params.key: nothing remembered under '{key}'; known keys: {known}.")
            return {"key": key, "value": entry.value, "updated_at": entry.updated_at.isoformat()}
        if query:
            from django.db.models import Q

            rows = rows.filter(Q(key__icontains=query) | Q(value__icontains=query))
        memories = [{"key": e.key, "value": e.value} for e in rows.order_by("key")]
        return {"memories": memories, "count": len(memories)}

    @action(
        description="Forget one key, or every memory of the session with all=true.",
        parameters={"properties": {"key": {"type": "string"}, "all": {"type": "boolean", "default": False}}},
        side_effects=("state_mutation",),
        aliases=("delete_note", "erase_memory", "oublier"),
        tags=("memory", "notes", "session"),
    )
    def forget(self, key: str | None = None, all: bool = False) -> dict[str, Any]:  # noqa: A002 - the param's public name
        if not key and not all:
            raise ToolError("params.key: name the key to forget, or set all to true.")
        with transaction.atomic():
            rows = self._rows() if all else self._rows().filter(key=key)
            deleted, _ = rows.delete()
        return {"forgotten": deleted}
