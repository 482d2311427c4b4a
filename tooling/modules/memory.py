"""memory: the agent's working memory for a session (rows of ``tooling.MemoryEntry``).

The original Digitorn's four working-memory tools: ``set_goal{goal}``, ``remember{content}`` (a
fact; secret-looking tokens redacted, duplicates kept once), ``task_create{subject, description?}``
and ``task_update{taskId, status}``. The goal, the tasks and the facts are rendered into the agent's
system prompt every turn (:func:`working_memory`). This project's earlier key/value form stays:
``remember{key, value}``, ``recall``, ``forget``.

Calls without a session (direct API execution) share one app-wide scratch space (session id "").
Config: ``max_entries`` per session (default 500), ``max_value_chars`` (default 20000).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from django.db import transaction

from tooling.models import MemoryEntry
from tooling.modules.base import Module, ToolError, action

DEFAULT_MAX_ENTRIES = 500
DEFAULT_MAX_VALUE = 20_000
GOAL_KEY = "__goal__"
TASK_PREFIX = "__task__:"
FACT_PREFIX = "__fact__:"
TASK_STATUSES = ("pending", "in_progress", "completed", "blocked")
PROMPT_FACTS = 30
# Tokens that look like credentials are not written to memory (the original redacts them too).
_SECRETISH = re.compile(
    r"(sk-[A-Za-z0-9_-]{12,}|dg_[A-Za-z0-9_-]{8,}|gh[pousr]_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|"
    r"xox[abprs]-[A-Za-z0-9-]{10,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{5,})"
)


def _redact(text: str) -> str:
    return _SECRETISH.sub("[redacted]", text)


def working_memory(*, app_id: str, session_id: str) -> str:
    """The goal, tasks and latest facts of a session as a system-prompt section ("" when empty)."""
    rows = list(
        MemoryEntry.objects.filter(app_id=app_id, session_id=session_id or "").order_by("created_at", "id")
    )
    goal = next((r.value for r in rows if r.key == GOAL_KEY), "")
    tasks = []
    for r in rows:
        if r.key.startswith(TASK_PREFIX):
            try:
                task = json.loads(r.value)
            except ValueError:
                continue
            tasks.append(f"- [{task.get('status', 'pending')}] #{r.key[len(TASK_PREFIX):]} {task.get('subject', '')}")
    facts = [f"- {r.value}" for r in rows if r.key.startswith(FACT_PREFIX)][-PROMPT_FACTS:]
    notes = [f"- {r.key}: {r.value[:200]}" for r in rows if not r.key.startswith("__")][-PROMPT_FACTS:]
    if not (goal or tasks or facts or notes):
        return ""
    parts = ["## Working memory (kept by the memory tools across turns)"]
    if goal:
        parts.append(f"Goal: {goal}")
    if tasks:
        parts.append("Tasks:\n" + "\n".join(tasks))
    if facts or notes:
        parts.append("Facts:\n" + "\n".join(facts + notes))
    return "\n".join(parts)


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

    def _store(self, key: str, value: str) -> bool:
        """Upsert one row within the limits; True when it replaced an existing one."""
        max_value = int(self.config.get("max_value_chars") or DEFAULT_MAX_VALUE)
        if len(value) > max_value:
            raise ToolError(f"{len(value)} characters, above memory.max_value_chars ({max_value}).")
        max_entries = int(self.config.get("max_entries") or DEFAULT_MAX_ENTRIES)
        with transaction.atomic():
            rows = self._rows()
            if not rows.filter(key=key).exists() and rows.count() >= max_entries:
                raise ToolError(f"this session already holds {max_entries} memories; forget some first.")
            _, created = MemoryEntry.objects.update_or_create(
                app_id=self.context.app_id,
                session_id=self.context.session_id or "",
                key=key,
                defaults={"value": value},
            )
        return not created

    @action(
        description="Remember a fact for the rest of the session (content), or store a value under a key "
        "(key, value; replaces an earlier value of the key). Facts appear in your working memory each turn.",
        parameters={
            "properties": {
                "content": {"type": "string", "minLength": 1},
                "key": {"type": "string", "minLength": 1, "maxLength": 200},
                "value": {"type": "string"},
            },
        },
        side_effects=("state_mutation",),
        aliases=("store", "save_note", "note", "memorize", "fact", "add_fact", "retenir", "memoriser", "souvenir"),
        tags=("memory", "notes", "session"),
    )
    def remember(self, content: str | None = None, key: str | None = None, value: str | None = None) -> dict[str, Any]:
        if content is not None:
            fact = _redact(content.strip())
            digest = hashlib.sha256(fact.encode()).hexdigest()[:16]
            replaced = self._store(f"{FACT_PREFIX}{digest}", fact)
            return {"remembered": fact, "duplicate": replaced}
        if not key or value is None:
            raise ToolError("params.content: say what to remember (or give key and value).")
        if key.startswith("__"):
            raise ToolError("params.key: keys starting with '__' are reserved for working memory.")
        replaced = self._store(key, value)
        return {"key": key, "stored": True, "replaced": replaced}

    @action(
        description="Set the goal of this session: what you are trying to achieve. It stays in your "
        "working memory every turn until you set another.",
        parameters={"properties": {"goal": {"type": "string", "minLength": 1}}, "required": ["goal"]},
        side_effects=("state_mutation",),
        aliases=("goal", "objective", "objectif"),
        tags=("memory", "goal", "planning"),
    )
    def set_goal(self, goal: str) -> dict[str, Any]:
        self._store(GOAL_KEY, _redact(goal.strip()))
        return {"goal": goal.strip()}

    @action(
        description="Create a task in this session's task list (shown in your working memory).",
        parameters={
            "properties": {
                "subject": {"type": "string", "minLength": 1, "maxLength": 500},
                "description": {"type": "string"},
            },
            "required": ["subject"],
        },
        side_effects=("state_mutation",),
        aliases=("todo", "add_todo", "add_task", "create_task", "tache"),
        tags=("memory", "tasks", "planning"),
    )
    def task_create(self, subject: str, description: str = "") -> dict[str, Any]:
        with transaction.atomic():
            numbers = [
                int(k[len(TASK_PREFIX):])
                for k in self._rows().filter(key__startswith=TASK_PREFIX).values_list("key", flat=True)
                if k[len(TASK_PREFIX):].isdigit()
            ]
            task_id = str(max(numbers, default=0) + 1)
            task = {"subject": subject, "description": description, "status": "pending"}
            self._store(f"{TASK_PREFIX}{task_id}", json.dumps(task))
        return {"taskId": task_id, **task}

    @action(
        description="Update a task's status: pending, in_progress, completed or blocked.",
        parameters={
            "properties": {
                "taskId": {"type": "string", "minLength": 1},
                "status": {"type": "string", "enum": list(TASK_STATUSES)},
            },
            "required": ["taskId", "status"],
        },
        side_effects=("state_mutation",),
        aliases=("update_task", "update_todo", "complete_task", "todo_update"),
        tags=("memory", "tasks", "planning"),
    )
    def task_update(self, taskId: str, status: str) -> dict[str, Any]:  # noqa: N803 - the original's name
        row = self._rows().filter(key=f"{TASK_PREFIX}{taskId}").first()
        if row is None:
            known = [k[len(TASK_PREFIX):] for k in self._rows().filter(key__startswith=TASK_PREFIX).values_list("key", flat=True)]
            raise ToolError(f"params.taskId: no task '{taskId}'; tasks: {known}.")
        task = json.loads(row.value)
        task["status"] = status
        self._store(row.key, json.dumps(task))
        return {"taskId": taskId, **task}

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
