"""Playing one turn: transcript → brain → tool calls → results → brain … until a final answer,
``max_turns`` or ``timeout``.

A call that needs a human suspends the turn (lease released, no coroutine kept); the approval's
decision resumes it wherever ``scheduler.advance_session`` next runs. Every step's state is in the
database (``state``): a turn resumed by another worker goes on where this one stopped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from django.conf import settings

from apps_registry.selectors import app_runtime
from conversations import hooks
from conversations.brains import BrainError, brain_for
from conversations.events import db, error_data, main_loop
from conversations.models import Message, Turn
from conversations.turn_events import DONE, THINKING, TOOL, Carry, model_call_events, status_data
from conversations.turns.context import (
    DEFAULT_CONTEXT_TOKENS,
    RECAP_MAX_ITEMS,
    delegation_note,
    last_assistant_text,
    recap,
    split_before_secret_prefix,
    stable_cut,
    to_brain,
    unanswered_calls,
)
from conversations.turns.delegation import CURRENT, DelegationCall, wait_deadline, wait_outcome
from conversations.turns.state import (
    ClaimedTurn,
    transcript_load,
    turn_calls_started,
    turn_claim,
    turn_compacted,
    turn_emit,
    turn_finish_and_peek,
    turn_heartbeat,
    turn_record_pending,
    turn_record_reply,
    turn_record_result,
    turn_record_wait,
    turn_record_wait_result,
    turn_suspend,
    turn_tool_start,
)
from conversations.turns.wakeup import schedule_advance
from digitorn_site import fastsql
from digitorn_site.errors import DigitornError
from tooling.agent_calls import (
    agent_call_gate,
    agent_tool_call,
    agent_tools,
    call_is_delegation,
    call_is_read_only,
)
from tooling.modules.memory import working_memory
from tooling.services import audit_close, audit_open, mask_secrets, seal_secrets, unseal_secrets

log = logging.getLogger("digitorn.engine")

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
TOKEN_FLUSH_SECONDS = 0.25


class _Stop(Exception):
    def __init__(self, content: str, *, truncated: bool = False, cancelled: bool = False, record: bool = True,
                 model_calls: int = 0, error: str | None = None):
        self.content = content
        self.error = error  # the `result` event's error (the turn ended on a failure)
        self.model_calls = model_calls
        self.truncated = truncated
        self.cancelled = cancelled
        self.record = record


class TurnRunner:
    def __init__(self, claim: ClaimedTurn, *, compacted_upto: int = 0, prepared: Any = None):
        self.claim = claim
        # What _prepare returned (or raised) in the claim's thread hop (claim_and_prepare), if it ran.
        self._prepared = prepared
        # Writes already decided but not yet run: the next thread hop of the turn runs them first,
        # each in its own transaction as before (see _db).
        self._deferred: list[Callable[[], Any]] = []
        self.finished = False
        self.more = True
        self.cancelled = claim.cancel_requested
        self.lease_lost = False
        self.started = time.monotonic()
        self.active_before = float(claim.state.get("active_seconds", 0.0))
        self.turns_used = claim.turns_used
        # Tokens spent by this turn's model calls (kept in Turn.state across an approval pause).
        self.usage: dict[str, int] = dict(claim.state.get("usage") or {})
        # The previous turn of this session run here already compacted up to that message: its recap
        # still stands, so the next turn does not announce the same compaction again.
        self.compacted_upto = int(claim.state.get("compacted_upto", 0)) or compacted_upto
        # This turn's view of the transcript, read once and extended with what the runner writes:
        # while it holds the lease nothing else appends messages to the session.
        self.transcript: list[Message] = []
        # Mirrors of Turn.state kept here so a step costs no extra reads; the DB stays authoritative
        # (a decision arriving while this runner works is re-checked by turn_suspend).
        self.pending: dict[str, str] = dict(claim.state.get("pending", {}))
        self.decisions: dict[str, dict] = dict(claim.state.get("decisions", {}))
        # Tool parameters as the model wrote them, secrets included: in memory only. The transcript
        # and events hold the masked form; a turn resumed elsewhere unseals Turn.state["sealed"].
        self.plain_params: dict[str, dict] = {}
        self.sealed: dict[str, Any] = dict(claim.state.get("sealed", {}))
        # Calls with side effects marked as started (committed) before they ran. One still without a
        # result when a turn is resumed was cut by a crash: it is answered "interrupted", not re-run.
        self.started_calls: set[str] = set(claim.state.get("started_calls", {}))
        # Calls waiting for delegated runs (agent_spawn): call id → {"tasks": [...], ...}.
        self.waits: dict[str, dict] = dict(claim.state.get("waits", {}))
        # status / in_token / out_token / stream_done / hook events waiting for the turn's next write.
        self.carry = Carry()
        self.model_calls_here = 0
        self.injected_at_end: list[dict] = []  # turn_end hooks' inject_message, written once the turn ended

    # -- helpers ---------------------------------------------------------------------------
    def mask(self, value: Any) -> Any:
        """What may be stored or shown: every secret value of the app replaced by the mask."""
        secrets = getattr(getattr(self, "app", None), "secret_values", ())
        return mask_secrets(value, secrets) if secrets else value

    def _params_for(self, call: dict) -> dict:
        """The parameters a call runs with: the plaintext the model wrote, from memory or unsealed."""
        if call["id"] in self.plain_params:
            return self.plain_params[call["id"]]
        if call["id"] in self.sealed:
            return unseal_secrets(self.sealed[call["id"]], self.app.secret_values)
        return call["params"]

    def active_seconds(self) -> float:
        return self.active_before + (time.monotonic() - self.started)

    def _db(self, fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        """``db(fn)`` that first runs the deferred writes in the same thread hop (one executor round
        trip instead of two); each keeps its own transaction, committed before ``fn`` starts, so a
        turn killed in between is recovered as if the hops had been separate."""
        if not self._deferred:
            return db(fn)
        deferred, self._deferred = self._deferred, []

        def run(*args: Any, **kwargs: Any) -> Any:
            for write in deferred:
                write()
            return fn(*args, **kwargs)

        return db(run)

    deferred_db = _db  # for the scheduler recording a failure of the turn after the runner stopped

    async def emit(self, type: str, data: dict) -> None:
        # error, hook and token events may quote model output or tool input: masked like the rest.
        await self._db(turn_emit)(turn_pk=self.claim.turn_pk, type=type, data=self.mask(data), before=self._carried())

    def _carried(self) -> list[tuple[str, dict]]:
        return [(type, self.mask(data)) for type, data in self.carry.take()]

    async def _flush_carry(self) -> None:
        """Write carried events now (when no write of the turn is coming to take them along)."""
        events = self._carried()
        if events:
            type, data = events[-1]
            await self._db(turn_emit)(turn_pk=self.claim.turn_pk, type=type, data=data, before=events[:-1])

    async def _fire_hooks(self, event: str) -> None:
        """The manifest's hooks for ``event`` (conversations.hooks); their events ride the next write."""
        app, agent = getattr(self, "app", None), getattr(self, "agent", None)
        if app is None or agent is None or self.claim.depth > 0 or not hooks.wants_any(app, event):
            return
        try:
            carried, injected = await self._db(hooks.fire)(
                app=app, event=event, session_pk=self.claim.session_pk, turn_pk=self.claim.turn_pk,
                correlation_id=self.claim.correlation_id, tool_calls=self.claim.tool_calls_count,
                transcript=self.transcript, context=agent.brain.context or getattr(app.runtime, "context", None),
                inject_now=event != "turn_end",
            )
        except Exception:  # noqa: BLE001 - a hook never breaks the turn
            log.warning("hooks on %s failed for turn %s", event, self.claim.correlation_id, exc_info=True)
            return
        self.carry.extend(carried)
        self.injected_at_end = injected if event == "turn_end" else []
        for message in injected if event != "turn_end" else ():
            self._remember(message)

    async def _heartbeat(self) -> None:
        interval = max(min(settings.DIGITORN_LEASE_SECONDS / 3, 1.0), 0.2)
        while True:
            await asyncio.sleep(interval)
            state = await db(turn_heartbeat)(turn_pk=self.claim.turn_pk, worker=WORKER_ID)
            if state is None:
                self.lease_lost = True
                return
            self.cancelled = self.cancelled or state

    def _check(self) -> None:
        if self.lease_lost:
            raise Turn.DoesNotExist("the lease was lost (session deleted or turn taken over)")
        if self.cancelled:
            raise _Stop("Cancelled by the user.", cancelled=True)

    # -- the turn --------------------------------------------------------------------------
    async def run(self) -> None:
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat())
        try:
            try:
                await self._loop()
            except _Stop as stop:
                await self._fire_hooks("turn_end")
                self.carry.add("status", status_data(DONE, self.claim.correlation_id))
                payload, self.more = await self._db(turn_finish_and_peek)(
                    turn_pk=self.claim.turn_pk,
                    content=self.mask(stop.content),
                    truncated=stop.truncated,
                    cancelled=stop.cancelled,
                    record_message=stop.record,
                    model_calls=stop.model_calls,
                    unanswered=unanswered_calls(self.transcript, self.claim.correlation_id) if self.transcript else None,
                    usage=self.usage,
                    error=stop.error,
                    events=self._carried(),
                    session_pk=self.claim.session_pk,
                )
                self.finished = payload is not None
                if self.finished and self.injected_at_end:
                    # turn_end's inject_message: read by the model at the session's next turn.
                    await self._db(hooks.inject_messages)(session_pk=self.claim.session_pk,
                                                   correlation_id=self.claim.correlation_id,
                                                   messages=self.injected_at_end)
        finally:
            heartbeat.cancel()
            try:
                await heartbeat
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    async def _setup(self) -> None:
        prepared, self._prepared = self._prepared, None
        if prepared is None:
            prepared = await self._db(_prepare)(
                self.claim.app_id, self.claim.agent_id, self.claim.session_pk, RECAP_MAX_ITEMS
            )
        if isinstance(prepared, BaseException):
            raise prepared  # raised in the claim's hop (claim_and_prepare): handled as if raised here
        self.app, self.agent, self.transcript, tools = prepared
        if self.agent is None:
            why = f"App '{self.claim.app_id}' declares no agents; add one under 'agents:' in its manifest."
            raise _Stop(why, error=why)
        if self.claim.depth > 0 and self.claim.agent_id and self.agent.id != self.claim.agent_id:
            # A delegated run of an agent the app no longer declares (redeployed meanwhile): not
            # another agent in its place.
            why = f"Agent '{self.claim.agent_id}' is no longer declared by app '{self.claim.app_id}'."
            raise _Stop(why, error=why)
        self.brain = brain_for(self.agent)
        self.streams = (self.agent.brain.provider or "").lower() != "scripted"
        self.max_turns = self.agent.max_turns or self.app.runtime.max_turns
        self.window = max(int(self.app.runtime.context_window_messages or 0), 4)
        self.transcript_limit = self.window + RECAP_MAX_ITEMS
        del self.transcript[: -self.transcript_limit]
        self.tools, self.risk = tools
        self.delegation_note = delegation_note(self.app, self.agent, self.claim.depth, self.tools)

    async def _loop(self) -> None:
        try:
            await self._setup()
        except BrainError as exc:
            await self.emit("error", error_data(exc.message, kind=exc.kind, correlation_id=self.claim.correlation_id))
            raise _Stop(exc.message, error=exc.message)
        except DigitornError as exc:
            await self.emit("error", error_data(exc.message, kind=exc.error_code, correlation_id=self.claim.correlation_id))
            raise _Stop(exc.message, error=exc.message)
        if self.claim.turns_used == 0 and self.claim.tool_calls_count == 0:
            await self._fire_hooks("turn_start")  # with session_start on a session's first turn

        while True:
            self._check()
            transcript = self.transcript
            missing = unanswered_calls(transcript, self.claim.correlation_id)
            if missing:
                suspended = await self._run_calls(missing)
                if suspended:
                    return
                continue
            if self.turns_used >= self.max_turns:
                last = last_assistant_text(transcript, self.claim.correlation_id)
                note = f"[truncated: stopped after {self.max_turns} model calls (max_turns) without a final answer]"
                raise _Stop(f"{last}\n\n{note}".strip(), truncated=True)
            remaining = self.app.runtime.timeout - self.active_seconds()
            if remaining <= 0:
                raise self._timeout_stop(transcript)
            if self.model_calls_here or self.claim.turns_used:  # the claim said it for the turn's first call
                self.carry.add("status", status_data(THINKING, self.claim.correlation_id))
            self.model_calls_here += 1
            messages = await self._brain_messages(transcript)
            try:
                reply = await asyncio.wait_for(
                    self.brain.complete(messages=messages, tools=self.tools, on_token=self._token_sink_for()),
                    timeout=remaining,
                )
            except TimeoutError:
                raise self._timeout_stop(transcript)
            except BrainError as exc:
                await self.emit("error", error_data(exc.message, kind=exc.kind, correlation_id=self.claim.correlation_id))
                raise _Stop(exc.message, error=exc.message)
            finally:
                await self._flush_tokens()
            self.turns_used += 1
            self._count_usage(reply.usage)
            if self.streams:  # the scripted brain has no usage nor streamed text to report
                self.carry.extend(model_call_events(reply.usage, self.usage, self.claim.correlation_id,
                                                    model_call=self.turns_used))
            if not reply.tool_calls:
                self._check()
                raise _Stop(reply.text or "", model_calls=1)
            calls = [{"id": c.id or f"call_{uuid.uuid4().hex[:12]}", "name": c.name, "params": c.params or {}} for c in reply.tool_calls]
            shown, sealed = self._shown_calls(calls)
            # The call's in/out_token and stream_done and `status {tool}` ride with the first tool_start.
            self.carry.add("status", status_data(TOOL, self.claim.correlation_id))
            # The reply is written at the start of the next thread hop (the first call's), in its own
            # transaction as before: the transcript holds the message now, its pk once it is written.
            text = self.mask(reply.text or "")
            message = Message(session_id=self.claim.session_pk, role=Message.Role.ASSISTANT, content=text,
                              tool_calls=shown, correlation_id=self.claim.correlation_id)
            self._deferred.append(partial(
                turn_record_reply, turn_pk=self.claim.turn_pk, text=text, tool_calls=shown, sealed=sealed,
                message=message, session_pk=self.claim.session_pk,
            ))
            self._remember(message)

    def _shown_calls(self, calls: list[dict]) -> tuple[list[dict], dict[str, Any]]:
        """The calls as stored and emitted (secrets masked), and the sealed parameters of those
        that held a secret; the plaintext stays in ``plain_params`` for this process only."""
        secrets = self.app.secret_values
        if not secrets:
            return calls, {}
        shown: list[dict] = []
        sealed: dict[str, Any] = {}
        self.plain_params = {}
        for call in calls:
            masked = mask_secrets(call["params"], secrets)
            if masked != call["params"]:
                self.plain_params[call["id"]] = call["params"]
                sealed[call["id"]] = seal_secrets(call["params"], secrets)
            shown.append({**call, "params": masked})
        self.sealed = sealed
        return shown, sealed

    def _count_usage(self, usage: dict | None) -> None:
        """Add a reply's token counts (the brains' prompt/completion names) to the turn's."""
        usage = usage or {}
        spent = {
            "input_tokens": int(usage.get("prompt_tokens") or 0),
            "output_tokens": int(usage.get("completion_tokens") or 0),
            "total_tokens": int(usage.get("total_tokens") or 0),
        }
        for key, value in spent.items():
            self.usage[key] = int(self.usage.get(key, 0)) + value

    def _remember(self, message: Message) -> None:
        self.transcript.append(message)
        if len(self.transcript) > self.transcript_limit:
            del self.transcript[0]

    def _timeout_stop(self, transcript: list[Message]) -> _Stop:
        last = last_assistant_text(transcript, self.claim.correlation_id)
        note = f"[truncated: the turn hit the app's {self.app.runtime.timeout:g} s timeout before a final answer]"
        return _Stop(f"{last}\n\n{note}".strip(), truncated=True)

    # -- streaming text --------------------------------------------------------------------
    def _token_sink_for(self) -> Callable[[str], Awaitable[None]] | None:
        # The scripted brain has its whole reply at once: `token` events would only add writes.
        if (self.agent.brain.provider or "").lower() == "scripted":
            return None
        return self._token_sink()

    def _token_sink(self) -> Callable[[str], Awaitable[None]]:
        self._buffer: list[str] = []
        self._last_flush = time.monotonic()

        async def on_token(text: str) -> None:
            if not text:
                return
            self._buffer.append(text)
            # Batching keeps a fast model from writing one event row per token.
            if time.monotonic() - self._last_flush >= TOKEN_FLUSH_SECONDS:
                await self._flush_tokens(final=False)

        return on_token

    async def _flush_tokens(self, final: bool = True) -> None:
        buffer = getattr(self, "_buffer", None)
        if not buffer:
            return
        text = "".join(buffer)
        buffer.clear()
        if not final:
            # A secret the model streams may straddle two flushes: what could be its beginning
            # waits for the next one, so each event holds whole secrets (which emit masks).
            text, held = split_before_secret_prefix(text, getattr(self.app, "secret_values", ()))
            if held:
                buffer.append(held)
            if not text:
                return
        self._last_flush = time.monotonic()
        await self.emit("token", {"delta": text, "correlation_id": self.claim.correlation_id})

    # -- context ---------------------------------------------------------------------------
    async def _brain_messages(self, transcript: list[Message]) -> list[dict]:
        system = []
        if self.agent.system_prompt:
            system.append({"role": "system", "content": self.agent.system_prompt})
        if self.delegation_note:
            system.append({"role": "system", "content": self.delegation_note})
        if "memory" in self.app.modules:
            # The original renders working memory (goal, tasks, facts) into the prompt every turn.
            memory = await self._db(working_memory_text)(self.app.app_id, self.claim.session_id)
            if memory:
                system.append({"role": "system", "content": memory})
        # runtime.context / brain.context (the original's ContextConfig): compact to keep_recent when
        # the estimated tokens pass compression_trigger of the budget; 'truncate' drops the older
        # messages, 'summarize' keeps a recap of them. The message window stays a hard cap.
        context = self.agent.brain.context or getattr(self.app.runtime, "context", None) or {}
        window = self.window
        strategy = "summarize"
        if context:
            strategy = context.get("strategy", "summarize")
            budget = int(context.get("max_tokens") or 0) or DEFAULT_CONTEXT_TOKENS
            budget = max(budget - int(context.get("output_reserved") or 0), 256)
            tokens = sum(len(m.content or "") for m in transcript) // 4
            if tokens > budget * float(context.get("compression_trigger", 0.75)):
                window = min(window, max(int(context.get("keep_recent", 10)), 2))
        body = transcript
        if len(transcript) > window:
            cut = stable_cut(transcript, window, self.compacted_upto)
            if cut > 0:
                older, body = transcript[:cut], transcript[cut:]
                if strategy != "truncate":
                    system.append({"role": "system", "content": recap(older)})
                upto = older[-1].pk
                if upto != self.compacted_upto:
                    self.compacted_upto = upto
                    await self._db(turn_compacted)(
                        turn_pk=self.claim.turn_pk,
                        upto=upto,
                        data={
                            # The original's auto-compaction hook, as its `hook` events name it.
                            "hook_id": "_auto_compact",
                            "action_type": "compact_context",
                            "phase": "turn_start",
                            "details": {"compacted_messages": len(older), "kept_messages": len(body), "window": window},
                            "correlation_id": self.claim.correlation_id,
                        },
                    )
        return system + to_brain(body)

    # -- tools -----------------------------------------------------------------------------
    async def _run_calls(self, calls: list[dict]) -> bool:
        """Run the unanswered calls of the last reply; True when the turn was suspended."""
        # The transcript holds masked parameters; what runs is what the model wrote.
        calls = [{**call, "params": self._params_for(call)} for call in calls]
        pending = self.pending
        decisions = self.decisions
        waiting = False
        batch: list[dict] = []

        async def flush_batch() -> None:
            if not batch:
                return
            if len(batch) == 1:
                # One call: tool_start, the call and its result in one thread hop (three transactions).
                call = batch.pop()
                self._mark_started([call])
                await self._invoke_and_record(call, None)
                return
            self._mark_started(batch)
            # The batch carries the plaintext the calls need; the events carry the masked form. The
            # reply asking for them and their started marks go in the tool_start's transaction.
            prelude, self._deferred = self._deferred, []
            await db(turn_tool_start)(
                turn_pk=self.claim.turn_pk, calls=[{**c, "params": self.mask(c["params"])} for c in batch],
                before=self._carried(), link=self._link(), prelude=prelude,
            )
            outcomes = await asyncio.gather(*(self._invoke(c, None) for c in batch))
            for call, outcome in zip(batch, outcomes, strict=True):
                await self._record(call, outcome)
            batch.clear()

        for call in calls:
            self._check()
            if call["id"] in self.waits:
                await flush_batch()
                answer = await self._db(wait_outcome)(self.waits[call["id"]])
                if answer is None:
                    waiting = True
                    continue
                self.waits.pop(call["id"], None)
                self._remember(
                    await self._db(turn_record_wait_result)(
                        turn_pk=self.claim.turn_pk, call_id=call["id"], name=call["name"], result=self.mask(answer),
                        params=self.mask(call["params"]),
                    )
                )
                continue
            # A delegation started before a crash is found again by its call id, not started twice.
            if call["id"] in self.started_calls and not self._read_only(call) and not call_is_delegation(self.app, call):
                await flush_batch()
                await self._record(call, _interrupted(call["name"]))
                continue
            request_id = pending.get(call["id"])
            if request_id is not None:
                decision = decisions.get(request_id)
                if decision is None:
                    waiting = True
                    continue
                await flush_batch()
                if decision.get("approved"):
                    self._mark_started([call])
                    await self._invoke_and_record(call, request_id)
                else:
                    why = decision.get("message") or decision.get("status") or "denied"
                    outcome = {"status": "denied", "result": {"success": False, "data": None, "error": f"denied: {why}"}}
                    await self._record(call, outcome)
                continue
            # Read-only (low-risk) calls of one reply run together; anything else runs alone, in order.
            if self.risk.get(call["name"]) == "low":
                batch.append(call)
                continue
            await flush_batch()
            self._mark_started([call])
            await self._invoke_and_record(call, None)
        await flush_batch()
        if waiting or self.waits or any(rid not in decisions for rid in pending.values()):
            self._check()
            await self._flush_carry()  # nothing else of this turn is written before it suspends
            suspended = await self._db(turn_suspend)(
                turn_pk=self.claim.turn_pk, worker=WORKER_ID, active_seconds=self.active_seconds(), usage=self.usage
            )
            if suspended:
                self._wake_at_deadline()
            return suspended
        return False

    def _wake_at_deadline(self) -> None:
        """A wait with a timeout: look again when it expires (the periodic sweep is the safety net)."""
        deadline = wait_deadline(self.waits)
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        loop.call_later(max(deadline - time.time(), 0.0) + 0.05, schedule_advance, self.claim.session_pk)

    def _link(self) -> tuple[str, int]:
        """The turn's (correlation id, session pk): what the state writes would otherwise re-read."""
        return self.claim.correlation_id, self.claim.session_pk

    def _read_only(self, call: dict) -> bool:
        return call_is_read_only(self.app, call["name"], call.get("params"))

    def _mark_started(self, calls: list[dict]) -> None:
        """Commit the "started" mark of the calls that have side effects, before they run."""
        ids = [c["id"] for c in calls if not self._read_only(c)]
        if ids:
            # Committed in its own transaction at the start of the hop that runs the calls (the next one).
            self._deferred.append(partial(turn_calls_started, turn_pk=self.claim.turn_pk, call_ids=ids))
            self.started_calls.update(ids)

    async def _record(self, call: dict, outcome: dict) -> None:
        if outcome["status"] == "wait":
            self.waits[call["id"]] = outcome["wait"]
            await self._db(turn_record_wait)(turn_pk=self.claim.turn_pk, call_id=call["id"], wait=outcome["wait"])
            return
        if outcome["status"] == "pending_approval":
            self.started_calls.discard(call["id"])
            self.pending[call["id"]] = outcome["request_id"]
            await self._db(turn_record_pending)(
                turn_pk=self.claim.turn_pk,
                call_id=call["id"],
                name=call["name"],
                params=self.mask(call["params"]),
                request_id=outcome["request_id"],
            )
            return
        self._remember(
            await self._db(turn_record_result)(
                turn_pk=self.claim.turn_pk, call_id=call["id"], name=call["name"], result=self.mask(outcome["result"]),
                params=self.mask(call["params"]), link=self._link(),
            )
        )

    async def _invoke_and_record(self, call: dict, approval_request_id: str | None) -> None:
        """One call run and recorded in a single thread hop (two transactions: the tool's, then ours).

        The writes decided before (the reply asking for it, its started mark) go in the transaction
        of its tool_start, committed before it runs."""
        if approval_request_id is None:
            prelude, self._deferred = self._deferred, []
            run = db(_invoke_and_record_sync)
        else:
            prelude, run = [], self._db(_invoke_and_record_sync)
        outcome, message = await run(
            turn_pk=self.claim.turn_pk, before=self._carried() if approval_request_id is None else None,
            prelude=prelude, **self._invoke_kwargs(call, approval_request_id)
        )
        if outcome["status"] == "wait":
            self.waits[call["id"]] = outcome["wait"]
        elif message is None:
            self.started_calls.discard(call["id"])
            self.pending[call["id"]] = outcome["request_id"]
        else:
            self._remember(message)

    async def _invoke(self, call: dict, approval_request_id: str | None) -> dict:
        return await self._db(_invoke_sync)(**self._invoke_kwargs(call, approval_request_id))

    def _invoke_kwargs(self, call: dict, approval_request_id: str | None) -> dict:
        return dict(
            app=self.app,
            call=call,
            claim=self.claim,
            agent_id=self.agent.id,
            approval_request_id=approval_request_id,
            cancel_check=lambda: self.cancelled,
        )



# --- sync helpers (run in worker threads) ----------------------------------------------------


def _interrupted(name: str) -> dict:
    return {
        "status": "error",
        "result": {
            "success": False,
            "data": None,
            "error": f"interrupted: the daemon stopped while '{name}' was running. It was not run again "
            "because it has side effects; it may or may not have taken effect, so check before retrying.",
        },
    }


def working_memory_text(app_id: str, session_id: str) -> str:
    return working_memory(app_id=app_id, session_id=session_id)


def _invoke_sync(
    *,
    app,
    call: dict,
    claim: ClaimedTurn,
    agent_id: str,
    approval_request_id: str | None,
    cancel_check: Callable[[], bool],
    gate: Any = None,
    audit_row: Any = None,
) -> dict:
    delegation = DelegationCall(turn_pk=claim.turn_pk, call_id=call["id"], loop=main_loop())
    token = CURRENT.set(delegation)
    try:
        outcome = agent_tool_call(app=app, call=call, principal=claim.principal, session_id=claim.session_id,
                                  agent_id=agent_id, approval_request_id=approval_request_id,
                                  cancel_check=cancel_check, gate=gate, audit_row=audit_row)
    finally:
        CURRENT.reset(token)
    if delegation.wait is not None and outcome["status"] == "ok":
        # A call that waits for delegated runs: the turn suspends until they end (no thread held).
        return {"status": "wait", "wait": delegation.wait}
    return outcome


def _prepare(app_id: str, agent_id: str, session_pk: int, extra: int) -> tuple[Any, Any, list[Message], tuple | None]:
    """Runtime app, agent, transcript and tools in one thread hop (the window comes from the app).

    The agent is None when the app declares none.
    """
    app = app_runtime(app_id=app_id)
    window = max(int(app.runtime.context_window_messages or 0), 4)
    transcript = transcript_load(session_pk, window + extra)
    if not app.agents:
        return app, None, transcript, None
    try:
        agent = app.agent(agent_id or None)
    except KeyError:
        agent = app.agent()
    return app, agent, transcript, agent_tools(app, agent.id)


def claim_and_prepare(*, session_pk: int, worker: str) -> tuple[ClaimedTurn | None, Any]:
    """The claim and the turn's _prepare in one thread hop: the claim commits first (its own
    transaction), then what _prepare returns, or the exception it raised for the runner to raise."""
    claim = turn_claim(session_pk=session_pk, worker=worker)
    if claim is None:
        return None, None
    return claim, prepare_claimed(claim)


def prepare_claimed(claim: ClaimedTurn) -> Any:
    """_prepare for a committed claim, or the exception it raised (for TurnRunner._setup to raise)."""
    try:
        return _prepare(claim.app_id, claim.agent_id, claim.session_pk, RECAP_MAX_ITEMS)
    except Exception as exc:  # noqa: BLE001 - re-raised by TurnRunner._setup, where it was raised before
        return exc


def _invoke_and_record_sync(
    *, turn_pk: int, before: list[tuple[str, dict]] | None = None, prelude: list[Callable[[], Any]] = (),
    **kwargs: Any,
) -> tuple[dict, Message | None]:
    call = kwargs["call"]
    app = kwargs["app"]
    secrets = app.secret_values
    link = (kwargs["claim"].correlation_id, kwargs["claim"].session_pk)
    audit = None
    if kwargs["approval_request_id"] is None:
        gate = agent_call_gate(app=app, call=call, agent_id=kwargs["agent_id"])
        if gate is not None and gate.policy == "auto" and set(gate.spec.side_effects) <= {"read_only"}:
            # A read-only call that runs now: its audit row goes in the tool_start's transaction
            # (committed before it runs) and its outcome in the result's, not in one of its own.
            # Read-only only: until the outcome is written the row's outcome is "error" (no outcome
            # recorded yet), which a long call with effects (a shell command) would show as it runs.
            audit = audit_open(app=app, gate=gate, caller=f"agent:{kwargs['agent_id']}",
                               principal=kwargs["claim"].principal, session_id=kwargs["claim"].session_id)
            prelude = [*prelude, partial(fastsql.insert, audit)]
            kwargs = {**kwargs, "gate": gate, "audit_row": audit}
        # A call resumed after its approval had its tool_start before the request.
        turn_tool_start(turn_pk=turn_pk, calls=[{**call, "params": mask_secrets(call["params"], secrets)}],
                        before=before, link=link, prelude=prelude)
    try:
        outcome = _invoke_sync(**kwargs)
    except BaseException:
        if audit is not None:
            audit.error = "the call failed unexpectedly; the daemon's log has details"
            audit_close(audit)
        raise
    if audit is not None and outcome["status"] in ("wait", "pending_approval"):
        audit_close(audit)  # no result is recorded now: the outcome is written on its own
    if outcome["status"] == "wait":
        turn_record_wait(turn_pk=turn_pk, call_id=call["id"], wait=outcome["wait"])
        return outcome, None
    if outcome["status"] == "pending_approval":
        turn_record_pending(
            turn_pk=turn_pk, call_id=call["id"], name=call["name"], params=mask_secrets(call["params"], secrets),
            request_id=outcome["request_id"],
        )
        return outcome, None
    try:
        message = turn_record_result(
            turn_pk=turn_pk, call_id=call["id"], name=call["name"], result=mask_secrets(outcome["result"], secrets),
            params=mask_secrets(call["params"], secrets), link=link,
            also=None if audit is None else partial(audit_close, audit),
        )
    except Turn.DoesNotExist:
        if audit is not None:
            audit_close(audit)  # the session went meanwhile; the audit row outlives it, with its outcome
        raise
    return outcome, message
