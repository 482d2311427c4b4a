"""Background meta-tools for agents: ``background_run``, ``background_status``, ``background_cancel``.

The agent loop routes these names here; each answers in the tool-result shape ``{success, data, error}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from digitorn_site.errors import DigitornError, ValidationError
from tooling import registry
from tooling.background.selectors import (
    Status,
    background_task_get,
    background_task_list,
    background_task_payload,
)
from tooling.background.services import background_task_cancel, background_task_launch

if TYPE_CHECKING:
    from apps_registry.manifest.compiled import CompiledApp

BACKGROUND_META_TOOL_NAMES = registry.BACKGROUND_META_TOOL_NAMES


def background_meta_tools() -> list[dict[str, Any]]:
    """Schemas in the brain's tool format; the loop routes these names to background_meta_invoke."""
    return [
        {
            "name": "background_run",
            "description": (
                "Run a tool in the background instead of waiting for it (long searches, builds, slow "
                "commands). Returns a task_id at once; when the task finishes you get a notification "
                "with its result. Same policy as a direct call: a tool needing approval waits for it."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "tool": {
                        "type": "string",
                        "description": "Tool name in module.action form, e.g. shell.run",
                    },
                    "params": {"type": "object", "description": "The tool's parameters", "default": {}},
                },
                "required": ["tool"],
                "additionalProperties": False,
            },
        },
        {
            "name": "background_status",
            "description": (
                "Check background tasks: with task_id, that task's status and result; without, the "
                "tasks launched in this session, newest first."
            ),
            "parameters": {
                "type": "object",
                "properties": {"task_id": {"type": "string", "description": "A task_id from background_run"}},
                "additionalProperties": False,
            },
        },
        {
            "name": "background_cancel",
            "description": "Cancel a queued or running background task (a running command is stopped).",
            "parameters": {
                "type": "object",
                "properties": {"task_id": {"type": "string"}},
                "required": ["task_id"],
                "additionalProperties": False,
            },
        },
    ]


def background_meta_invoke(
    *, app: CompiledApp, name: str, params: dict, principal: str, session_id: str | None, agent_id: str | None
) -> dict[str, Any]:
    """Run one background meta-tool; returns the tool-result shape ``{success, data, error}``."""
    params = params if isinstance(params, dict) else {}
    try:
        if name == "background_run":
            task = background_task_launch(
                app=app,
                tool=params.get("tool", ""),
                params=params.get("params") or {},
                principal=principal,
                session_id=session_id,
                agent_id=agent_id,
            )
            data = background_task_payload(task)
            data["message"] = (
                "Waiting for a human to approve the call; it runs once approved."
                if task.status == Status.WAITING_APPROVAL
                else "Started in the background; you will be notified when it finishes."
            )
            return {"success": True, "data": data, "error": None}
        if name == "background_status":
            task_id = params.get("task_id")
            if task_id:
                task = background_task_get(app_id=app.app_id, task_id=str(task_id), principal=principal)
                return {"success": True, "data": background_task_payload(task), "error": None}
            tasks, total = background_task_list(
                app_id=app.app_id, principal=principal, session_id=session_id, limit=20
            )
            return {
                "success": True,
                "data": {"tasks": [background_task_payload(t) for t in tasks], "total": total},
                "error": None,
            }
        if name == "background_cancel":
            task_id = params.get("task_id")
            if not task_id:
                raise ValidationError("params.task_id: give the task_id returned by background_run.")
            task = background_task_cancel(app_id=app.app_id, task_id=str(task_id), principal=principal)
            return {"success": True, "data": background_task_payload(task), "error": None}
    except DigitornError as exc:
        return {"success": False, "data": None, "error": exc.message}
    return {
        "success": False,
        "data": None,
        "error": f"Unknown background tool '{name}'; use one of {', '.join(BACKGROUND_META_TOOL_NAMES)}.",
    }
