"""The one tool-invocation path: resolve → validate → gate → run → mask → truncate → record.

Agents, background tasks, meta-tools and the REST endpoint all call :func:`tool_invoke`; its gate
(:func:`tool_gate`, :func:`gate_approval_request`) is also what refuses a background task at launch.
:func:`tool_invoke` is synchronous and is never wrapped in a transaction as a whole: a tool may run a
subprocess for minutes and must not hold the database's write lock meanwhile; each write it makes
(an approval request, a memory row, the execution row) is its own short transaction.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import current_app
from django.utils.crypto import salted_hmac
from jsonschema import Draft202012Validator

from approvals.models import ApprovalRequest
from approvals.policy import resolve_policy_detail
from approvals.services import (
    approval_current,
    approval_request_create,
    approval_result_claim,
    approval_result_store,
)
from digitorn_site import fastsql
from digitorn_site.errors import DigitornError, NotFoundError, ValidationError
from tooling import ports, registry
from tooling.index import ToolSpec, cached_index
from tooling.models import ToolExecution
from tooling.modules.base import ToolContext, ToolError

log = logging.getLogger("digitorn.tooling")

MASK = "***"
# Published by name: the Celery adapter (tooling.approval_tasks) imports this module, not the reverse.
RUN_APPROVED_DIRECT_CALL_TASK = "tooling.approval_tasks.run_approved_direct_call"
TRUNCATION_MARKER = "\n…[truncated: {shown} of {total} characters shown]"


@dataclass
class ToolOutcome:
    status: str  # ok | error | blocked | pending_approval | denied
    tool: str  # canonical module.action
    success: bool
    data: Any = None
    error: str | None = None
    request_id: str | None = None
    duration_ms: float = 0.0
    risk_level: str = "low"

    def as_result(self) -> dict[str, Any]:
        return {"success": self.success, "data": self.data, "error": self.error}


# -- masking and truncation ---------------------------------------------------------------------


def mask_secrets(value: Any, secrets: tuple[str, ...] | list[str]) -> Any:
    """Replace every secret value inside strings (dict keys included), longest secrets first."""
    ordered = sorted((s for s in secrets if s), key=len, reverse=True)
    if not ordered:
        return value

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            for secret in ordered:
                if secret in item:
                    item = item.replace(secret, MASK)
            return item
        if isinstance(item, dict):
            return {walk(k) if isinstance(k, str) else k: walk(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [walk(v) for v in item]
        return item

    return walk(value)


# Parameters that must survive a suspension (an approval, a crash) are stored *sealed*: each secret
# value becomes a marker naming it by an HMAC under the daemon's SECRET_KEY, so no row holds the
# plaintext, and :func:`unseal_secrets` puts the app's current values back in memory right before the
# call runs. A model cannot forge a marker (it would need SECRET_KEY) to make a call carry a secret
# it never wrote, and the sealed form is never shown (people and models see the masked one).
SEAL_MARKER = re.compile(r"\{\{sealed-secret:([0-9a-f]{32})\}\}")


def _seal_tag(secret: str) -> str:
    return salted_hmac("digitorn.sealed-secret", secret, algorithm="sha256").hexdigest()[:32]


def seal_secrets(value: Any, secrets: tuple[str, ...] | list[str]) -> Any:
    """``value`` with every secret replaced by its sealed marker (see :func:`unseal_secrets`)."""
    ordered = sorted((s for s in secrets if s), key=len, reverse=True)
    if not ordered:
        return value
    markers = {secret: "{{sealed-secret:" + _seal_tag(secret) + "}}" for secret in ordered}

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            for secret in ordered:
                if secret in item:
                    item = item.replace(secret, markers[secret])
            return item
        if isinstance(item, dict):
            return {walk(k) if isinstance(k, str) else k: walk(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [walk(v) for v in item]
        return item

    return walk(value)


def unseal_secrets(value: Any, secrets: tuple[str, ...] | list[str]) -> Any:
    """The inverse of :func:`seal_secrets` for the app's current secret values (in memory only).

    A marker whose secret is no longer set (rotated, deleted) stays as it is."""
    by_tag = {_seal_tag(secret): secret for secret in secrets if secret}
    if not by_tag:
        return value

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            if "{{sealed-secret:" not in item:
                return item
            return SEAL_MARKER.sub(lambda m: by_tag.get(m.group(1), m.group(0)), item)
        if isinstance(item, dict):
            return {walk(k) if isinstance(k, str) else k: walk(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [walk(v) for v in item]
        return item

    return walk(value)


def truncate_result(data: Any, limit: int) -> Any:
    """Data whose JSON form is longer than ``limit`` becomes that JSON (or the string) cut, with a marker."""
    if data is None or limit <= 0:
        return data
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, default=str)
    if len(text) <= limit:
        return data
    return text[:limit] + TRUNCATION_MARKER.format(shown=limit, total=len(text))


# -- validation ---------------------------------------------------------------------------------


def _apply_param_aliases(spec: ToolSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Rename alias parameters (``file_path`` → ``path``) to the action's own names."""
    try:
        aliases = registry.action_spec(spec.module, spec.action).param_aliases
    except NotFoundError:
        return params
    if not aliases or not any(alias in params for alias, _ in aliases):
        return params
    renamed = dict(params)
    for alias, target in aliases:
        if alias in renamed:
            if target in renamed:
                raise ValidationError(
                    f"params.{alias}: '{alias}' and '{target}' name the same parameter; give one "
                    f"(tool '{spec.name}')."
                )
            renamed[target] = renamed.pop(alias)
    return renamed


def validate_params(spec: ToolSpec, params: Any) -> dict[str, Any]:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValidationError(
            f"params: must be an object of named parameters for '{spec.name}', not {type(params).__name__}."
        )
    params = _apply_param_aliases(spec, params)
    found = []
    for err in Draft202012Validator(spec.parameters).iter_errors(params):
        path = [str(p) for p in err.absolute_path]
        if err.validator == "required" and isinstance(err.instance, dict):
            # "'path' is a required property" belongs to the missing field, not to its parent.
            missing = [name for name in err.validator_value if name not in err.instance]
            if missing:
                path.append(missing[0])
        elif err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            if extra:
                path.append(extra[0])
        found.append({"path": ".".join(["params", *path]), "message": err.message})
    if found:
        found.sort(key=lambda e: e["path"])
        first = found[0]
        raise ValidationError(
            f"{first['path']}: {first['message']} (tool '{spec.name}')", details={"errors": found}
        )
    return params


# -- recording ----------------------------------------------------------------------------------


# What an audit row written before its call ran says until its outcome is written (see audit_open).
AUDIT_INTERRUPTED = "no outcome recorded yet: the call is running, or the daemon stopped while it ran"
_AUDIT_OUTCOME_FIELDS = ("outcome", "error", "duration_ms")


def _record(
    *, app_id: str, outcome: ToolOutcome, caller: str, principal: str, session_id: str | None,
    audit_row: ToolExecution | None = None,
) -> None:
    if audit_row is not None:
        # Inserted before the call ran (audit_open); its caller writes the outcome (audit_close).
        audit_row.outcome = outcome.status
        audit_row.error = (outcome.error or "")[:4000]
        audit_row.duration_ms = round(outcome.duration_ms, 3)
        return
    # One audit row per call, on every turn's path: a raw INSERT (see digitorn_site.fastsql).
    fastsql.insert(ToolExecution(
        app_id=app_id,
        tool=outcome.tool,
        caller=caller[:200],
        principal=principal[:100],
        session_id=session_id,
        outcome=outcome.status,
        error=(outcome.error or "")[:4000],
        duration_ms=round(outcome.duration_ms, 3),
    ))


def audit_open(*, app: Any, gate: ToolGate, caller: str, principal: str, session_id: str | None) -> ToolExecution:
    """The audit row of a call about to run (unsaved), for a caller that inserts it in a transaction
    committed before the call runs (the agent's tool_start): a call that ran always has its row.
    Until ``tool_invoke(audit_row=)`` fills in the outcome and the caller writes it (audit_close,
    in the transaction that records the result), it says no outcome was recorded yet: what stays
    if the daemon stops meanwhile."""
    return ToolExecution(
        app_id=app.app_id,
        tool=gate.tool,
        caller=caller[:200],
        principal=principal[:100],
        session_id=session_id,
        outcome=ToolExecution.Outcome.ERROR,
        error=AUDIT_INTERRUPTED,
        duration_ms=0.0,
    )


def audit_close(row: ToolExecution) -> None:
    """Write the outcome ``tool_invoke(audit_row=row)`` filled in on an inserted audit row."""
    fastsql.update(row, _AUDIT_OUTCOME_FIELDS)


def _finish(
    outcome: ToolOutcome, *, app: Any, caller: str, principal: str, session_id: str | None, started: float,
    audit_row: ToolExecution | None = None,
) -> ToolOutcome:
    outcome.data = truncate_result(
        mask_secrets(outcome.data, app.secret_values), app.runtime.max_tool_result_chars
    )
    if outcome.error:
        outcome.error = mask_secrets(outcome.error, app.secret_values)
    outcome.duration_ms = (time.monotonic() - started) * 1000
    _record(app_id=app.app_id, outcome=outcome, caller=caller, principal=principal, session_id=session_id,
            audit_row=audit_row)
    return outcome


# -- the gate -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolGate:
    """What the app's policy says about one call, decided before anything runs or is queued."""

    spec: ToolSpec
    params: dict[str, Any]  # validated, alias parameters renamed
    policy: str  # auto | approve | block
    reason: str

    @property
    def tool(self) -> str:
        return self.spec.name


def tool_gate(*, app: Any, tool_name: str, params: Any, agent_id: str | None) -> ToolGate:
    """The one gate of every tool call (``tool_invoke``, a background task's launch): resolve the
    name (aliases, did-you-mean: NotFoundError), validate the parameters (ValidationError naming the
    field), read the policy. A caller refuses a ``block`` in its own words and asks for approval
    with :func:`gate_approval_request` on ``approve``."""
    spec = cached_index(app).resolve(tool_name)
    params = validate_params(spec, params)
    decision = resolve_policy_detail(app, agent_id, spec.module, spec.action, spec.risk_level)
    return ToolGate(spec=spec, params=params, policy=decision.policy, reason=decision.reason)


def gate_approval_request(
    *,
    app: Any,
    gate: ToolGate,
    params: dict,
    principal: str,
    session_id: str | None,
    agent_id: str | None,
    origin: str,
    origin_ref: str,
) -> ApprovalRequest:
    """The approval request an ``approve`` decision opens: people see ``params`` masked, and what
    runs once approved is stored sealed (no secret value at rest)."""
    return approval_request_create(
        app=app,
        tool_name=gate.tool,
        params=mask_secrets(params, app.secret_values),
        call_params=seal_secrets(params, app.secret_values),
        risk_level=gate.spec.risk_level,
        reason=gate.reason,
        principal=principal,
        session_id=session_id,
        agent_id=agent_id or "",
        origin=origin,
        origin_ref=origin_ref,
    )


# -- the path -----------------------------------------------------------------------------------


def _run(
    *,
    app: Any,
    spec: ToolSpec,
    params: dict,
    principal: str,
    session_id: str | None,
    agent_id: str | None,
    cancel_check: Callable[[], bool] | None,
) -> ToolOutcome:
    module_cls = registry.get_module(spec.module)
    context = ToolContext(
        app_id=app.app_id,
        principal=principal,
        session_id=session_id,
        agent_id=agent_id,
        cancel_check=cancel_check,
        app_modules={k: dict(v or {}) for k, v in app.modules.items()},
    )
    module = module_cls(config=app.modules.get(spec.module) or {}, context=context)
    try:
        data = module.invoke_action(spec.action, params)
    except ToolError as exc:
        return ToolOutcome(
            status="error",
            tool=spec.name,
            success=False,
            data=exc.data,
            error=exc.message,
            risk_level=spec.risk_level,
        )
    except Exception as exc:  # noqa: BLE001 - a broken tool must not take the caller down
        log.exception("tool %s of app %s crashed", spec.name, app.app_id)
        return ToolOutcome(
            status="error",
            tool=spec.name,
            success=False,
            error=f"'{spec.name}' failed unexpectedly ({type(exc).__name__}: {exc}); the daemon's log has details.",
            risk_level=spec.risk_level,
        )
    return ToolOutcome(status="ok", tool=spec.name, success=True, data=data, risk_level=spec.risk_level)


def tool_invoke(
    *,
    app: Any,
    tool_name: str,
    params: dict,
    caller: str,
    principal: str,
    session_id: str | None = None,
    agent_id: str | None = None,
    approval_request_id: str | None = None,
    origin: str = "agent",
    origin_ref: str = "",
    cancel_check: Callable[[], bool] | None = None,
    gate: ToolGate | None = None,
    audit_row: ToolExecution | None = None,
) -> ToolOutcome:
    """Run a tool for ``caller`` through the app's policy (see the module docstring and contracts).

    Unknown tool → NotFoundError (did-you-mean); invalid params → ValidationError naming the field.
    With ``approval_request_id`` of an approved request for this app and tool, the parameters that
    were approved (the request's ``call_params``) are what runs.

    ``gate``: this call's :func:`tool_gate`, when the caller decided it already (same app, name,
    params and agent). ``audit_row``: the call's audit row, inserted by the caller (audit_open):
    its outcome is filled in, not written, and the caller writes it (audit_close).
    """
    started = time.monotonic()
    if gate is None:
        gate = tool_gate(app=app, tool_name=tool_name, params=params, agent_id=agent_id)
    spec, params = gate.spec, gate.params
    finish = {
        "app": app,
        "caller": caller,
        "principal": principal,
        "session_id": session_id,
        "started": started,
        "audit_row": audit_row,
    }

    if gate.policy == "block":
        outcome = ToolOutcome(
            status="blocked",
            tool=spec.name,
            success=False,
            error=f"'{spec.name}' is blocked by policy: {gate.reason}.",
            risk_level=spec.risk_level,
        )
        return _finish(outcome, **finish)

    if gate.policy == "approve":
        if approval_request_id:
            request = approval_current(request_id=approval_request_id)
            if request is None or request.app_id != app.app_id or request.tool_name != spec.name:
                raise NotFoundError(
                    f"approval_request_id: no approval request '{approval_request_id}' for tool '{spec.name}' "
                    f"of app '{app.app_id}'."
                )
            if request.status == ApprovalRequest.Status.PENDING:
                outcome = ToolOutcome(
                    status="pending_approval",
                    tool=spec.name,
                    success=False,
                    error=f"'{spec.name}' is waiting for approval (request {request.request_id}).",
                    request_id=request.request_id,
                    risk_level=spec.risk_level,
                )
                return _finish(outcome, **finish)
            if request.status != ApprovalRequest.Status.APPROVED:
                message = request.decision_message or request.status
                outcome = ToolOutcome(
                    status="denied",
                    tool=spec.name,
                    success=False,
                    error=f"denied: {message}",
                    request_id=request.request_id,
                    risk_level=spec.risk_level,
                )
                return _finish(outcome, **finish)
            # Stored sealed (no plaintext at rest): the app's secret values go back in memory only.
            params = unseal_secrets(request.call_params, app.secret_values)
        else:
            request = gate_approval_request(
                app=app,
                gate=gate,
                params=params,
                principal=principal,
                session_id=session_id,
                agent_id=agent_id,
                origin=origin,
                origin_ref=origin_ref,
            )
            outcome = ToolOutcome(
                status="pending_approval",
                tool=spec.name,
                success=False,
                error=f"'{spec.name}' needs approval: {gate.reason}.",
                request_id=request.request_id,
                risk_level=spec.risk_level,
            )
            return _finish(outcome, **finish)

    outcome = _run(
        app=app,
        spec=spec,
        params=params,
        principal=principal,
        session_id=session_id,
        agent_id=agent_id,
        cancel_check=cancel_check,
    )
    if approval_request_id:
        outcome.request_id = approval_request_id
    return _finish(outcome, **finish)


# -- direct calls that waited for approval ------------------------------------------------------


def direct_call_on_decision(*, request_id: str, approved: bool, message: str = "") -> None:
    """A decided request of a direct ``/execute`` call: approved → run it on a worker; else record why not."""
    request = approval_current(request_id=request_id)
    if request is None or request.origin != ApprovalRequest.Origin.DIRECT or request.result is not None:
        return
    if approved:
        try:
            current_app.send_task(RUN_APPROVED_DIRECT_CALL_TASK, args=[request_id])
        except Exception as exc:  # noqa: BLE001 - runs on commit of the decision; the decision stands
            log.exception("could not queue approved direct call %s", request_id)
            approval_result_store(
                request_id=request_id,
                result={
                    "status": "error",
                    "success": False,
                    "data": None,
                    "error": f"approved, but the call could not be queued for a worker ({type(exc).__name__}: {exc}); "
                    f"run it again with POST /api/apps/{request.app_id}/tools/{request.tool_name}/execute.",
                },
            )
        return
    approval_result_store(
        request_id=request_id,
        result={
            "status": "denied",
            "success": False,
            "data": None,
            "error": f"denied: {message or request.status}",
        },
    )


def direct_call_run(*, request_id: str) -> dict[str, Any] | None:
    """Run an approved direct call once (a redelivered message finds it claimed and does nothing)."""
    if not approval_result_claim(request_id=request_id):
        return None
    request = approval_current(request_id=request_id)
    try:
        app = ports.resolve_app(request.app_id)  # the worker looks the app up, as API views do
        outcome = tool_invoke(
            app=app,
            tool_name=request.tool_name,
            params=request.call_params,
            caller="api",
            principal=request.principal,
            session_id=request.session_id,
            approval_request_id=request_id,
            origin="direct",
        )
        result = {"status": outcome.status, **outcome.as_result()}
    except Exception as exc:  # noqa: BLE001 - the caller polls this row; it must end in a final state
        if not isinstance(exc, DigitornError):
            log.exception("approved direct call %s failed", request_id)
        message = exc.message if isinstance(exc, DigitornError) else f"{type(exc).__name__}: {exc}"
        result = {"status": "error", "success": False, "data": None, "error": message}
    approval_result_store(request_id=request_id, result=result)
    return result
