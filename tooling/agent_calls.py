"""An agent's tool calls, as the conversation runner sees them: which tools an agent is shown, and
one entry point that runs one of its calls.

``agent_tool_call`` routes a call to the background meta-tools, the discovery meta-tools
(``execute_tool`` included, which goes through the same gate) or ``tool_invoke``; a call the model
got wrong (bad params, unknown tool) becomes an error result the model reads and corrects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from digitorn_site.errors import DigitornError
from tooling.background import background_meta_invoke, background_meta_tools
from tooling.index import cached_index, injection_mode
from tooling.meta import meta_tool_invoke
from tooling.models import ToolExecution
from tooling.registry import BACKGROUND_META_TOOL_NAMES, DISCOVERY_META_TOOL_NAMES
from tooling.selectors import meta_tools, tools_for_agent
from tooling.services import ToolGate, tool_gate, tool_invoke

_READ_ONLY_META = {"search_tools", "get_tool", "list_categories", "browse_category", "background_status"}


def agent_tools(app, agent_id: str) -> tuple[list[dict], dict[str, str]]:
    """The tools the agent's model is shown (name, description, parameters) and each visible tool's
    risk level by name."""
    visible = tools_for_agent(app, agent_id)
    risk = {t["name"]: t.get("risk_level", "medium") for t in visible}
    # runtime.tool_injection (the original's §3.4): direct / compact_direct give every visible tool;
    # discovery gives the meta-tools plus runtime.direct_modules and memory (always one call away).
    # Unset: discovery only when the tools do not fit. A call to a meta-tool is always understood
    # (a scripted rule may use execute_tool directly); it goes through the same gate.
    mode = injection_mode(app, len(visible))
    if mode == "compact_direct":
        # Every tool, with its description cut to the first sentence (the original's compact form).
        visible = [{**t, "description": (t.get("description") or "").split(". ")[0][:160]} for t in visible]
    if mode == "discovery":
        always = {*getattr(app.runtime, "direct_modules", ()), "memory"}
        shown = [dict(t) for t in meta_tools()] + [t for t in visible if t["name"].partition(".")[0] in always]
    else:
        shown = visible
    tools = [{k: t[k] for k in ("name", "description", "parameters") if k in t} for t in shown]
    tools.extend(background_meta_tools())
    return tools, risk


def agent_tool_call(
    *,
    app,
    call: dict,
    principal: str,
    session_id: str,
    agent_id: str,
    approval_request_id: str | None,
    cancel_check: Callable[[], bool],
    gate: ToolGate | None = None,
    audit_row: ToolExecution | None = None,
) -> dict:
    """Run one call ``{id, name, params}`` of the agent's model; returns ``{status, result}`` or
    ``{status: "pending_approval", request_id}``. The call's id is the audit's ``origin_ref``.

    ``gate`` and ``audit_row``: what :func:`agent_call_gate` and ``audit_open`` gave for this plain
    tool call (see ``tool_invoke``)."""
    params = call["params"] if isinstance(call["params"], dict) else {}
    try:
        if call["name"] in BACKGROUND_META_TOOL_NAMES:
            result = background_meta_invoke(
                app=app,
                name=call["name"],
                params=params,
                principal=principal,
                session_id=session_id,
                agent_id=agent_id,
            )
            return {"status": "ok" if result.get("success") else "error", "result": result}
        # Both paths go through the same gate: a resumed call must present its approval.
        common = dict(app=app, params=params, caller=f"agent:{agent_id}", principal=principal,
                      session_id=session_id, agent_id=agent_id, approval_request_id=approval_request_id,
                      origin_ref=call["id"], cancel_check=cancel_check)
        if call["name"] in DISCOVERY_META_TOOL_NAMES:
            outcome = meta_tool_invoke(name=call["name"], **common)
        else:
            outcome = tool_invoke(tool_name=call["name"], origin="agent", gate=gate, audit_row=audit_row, **common)
    except DigitornError as exc:
        # Bad params, unknown tool (with its did-you-mean): the model reads the message and retries.
        return {"status": "error", "result": {"success": False, "data": None, "error": exc.message}}
    if outcome.status == "pending_approval":
        return {"status": "pending_approval", "request_id": outcome.request_id}
    return {"status": outcome.status, "result": outcome.as_result()}


def agent_call_gate(*, app, call: dict, agent_id: str) -> ToolGate | None:
    """The gate of a plain tool call (not a meta-tool), decided before it runs, for the caller to
    pass to :func:`agent_tool_call`; None for a meta-tool, or when the gate refuses the call
    (unknown tool, bad params: agent_tool_call reports it as it always did)."""
    name = call["name"]
    if name in BACKGROUND_META_TOOL_NAMES or name in DISCOVERY_META_TOOL_NAMES:
        return None
    params = call["params"] if isinstance(call["params"], dict) else {}
    try:
        return tool_gate(app=app, tool_name=name, params=params, agent_id=agent_id)
    except DigitornError:
        return None


def call_is_read_only(app, name: str, params: Any) -> bool:
    """Whether a call may safely run twice: its tool declares only the ``read_only`` side effect.

    Unknown tools count as having side effects; ``execute_tool`` is judged by the tool it runs."""
    if name in _READ_ONLY_META:
        return True
    if name == "execute_tool":
        name = str((params or {}).get("name") or "") if isinstance(params, dict) else ""
    try:
        spec = cached_index(app).resolve(name)
    except Exception:  # noqa: BLE001 - unknown or ambiguous: assume it changes something
        return False
    return set(spec.side_effects) <= {"read_only"}


def call_is_delegation(app, call: dict) -> bool:
    """agent_spawn calls: re-running one after a crash finds the runs it started (by call id)."""
    name = call["name"]
    if name == "execute_tool":
        params = call.get("params")
        name = str(params.get("name") or "") if isinstance(params, dict) else ""
    try:
        return cached_index(app).resolve(name).module == "agent_spawn"
    except Exception:  # noqa: BLE001 - unknown: not a delegation
        return False
