"""The agent loop: resumable, one step at a time, every step's state in the database.

``advance_session`` claims the head of a session's queue with a lease and plays the turn:
transcript → brain → tool calls through ``tool_invoke`` → results → brain … until a final answer,
``max_turns`` or ``timeout``. A call that needs a human suspends the turn (lease released, no
coroutine kept); the approval's decision resumes it wherever ``advance_session`` next runs. After a
turn it takes the next queued one, so turns of a session are serial and FIFO.

Turns run as asyncio tasks in the ASGI worker that accepted the message (``schedule_advance``);
code without an event loop (admin, Celery) goes through ``conversations.tasks.advance_session_task``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

from conversations import hooks, services
from conversations.delegation import wait_deadline, wait_outcome
from conversations.events import db, error_data, main_loop
from conversations.models import Message, Turn
from conversations.turn_events import DONE, THINKING, TOOL, Carry, model_call_events, status_data
from digitorn_site import fastsql

log = logging.getLogger("digitorn.engine")

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
TOKEN_FLUSH_SECONDS = 0.25
RECAP_ITEM_CHARS = 300
# Older messages summarised in a recap at most; anything before them is only counted. Bounds both
# the recap's size and what a step reads from the database, however long the session grows.
RECAP_MAX_ITEMS = 40
# Once compacted, the kept tail may grow back to the window before the cut moves again, and a new
# cut keeps this share of the window. A cut that moves at every step would write a `hook` event per
# step and change the recap (the prompt's prefix, which providers cache) at every model call.
RECOMPACT_KEEP = 0.75
# runtime.context.max_tokens 0 means "the model's window"; without a model table, assume this much.
DEFAULT_CONTEXT_TOKENS = 128_000

# Sessions this process is advancing, and those poked again while it was (re-check on exit).
_running: set[int] = set()
_again: set[int] = set()
_tasks: set[asyncio.Task] = set()
# Per session, the message up to which a turn run in this process compacted the context. The next
# turn keeps that recap instead of announcing the same compaction again (another process re-announces
# it once). Bounded: the oldest sessions are forgotten first.
_compacted: dict[int, int] = {}
_COMPACTED_MAX = 10_000


# --- scheduling ------------------------------------------------------------------------------


def _start_task(loop: asyncio.AbstractEventLoop, session_pk: int) -> None:
    task = loop.create_task(advance_session(session_pk=session_pk))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def schedule_advance(session_pk: int) -> None:
    """Run the session's queue: as a task on this worker's event loop, else through Celery."""
    loop = main_loop()
    if loop is not None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            _start_task(loop, session_pk)
        else:
            loop.call_soon_threadsafe(_start_task, loop, session_pk)
        return
    from conversations.tasks import advance_session_task

    advance_session_task.delay(session_pk)


_recovery_loops: set[int] = set()


def ensure_recovery() -> None:
    """Once per event loop (i.e. per started worker): resume work a previous run left behind."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    if id(loop) in _recovery_loops:
        return
    _recovery_loops.add(id(loop))

    async def recover() -> None:
        try:
            for pk in await db(services.turns_recoverable)():
                _start_task(loop, pk)
        except Exception:  # noqa: BLE001 - the periodic Celery sweep will try again
            log.warning("turn recovery at start failed", exc_info=True)

    task = loop.create_task(recover())
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


# --- the loop --------------------------------------------------------------------------------


async def advance_session(*, session_pk: int) -> None:
    """Play the session's queued turns one after the other until none is claimable here."""
    if session_pk in _running:
        _again.add(session_pk)
        return
    _running.add(session_pk)
    try:
        while True:
            _again.discard(session_pk)
            claim = await db(services.turn_claim)(session_pk=session_pk, worker=WORKER_ID)
            if claim is None:
                if session_pk in _again:
                    continue
                return
            try:
                runner = _TurnRunner(claim, compacted_upto=_compacted.get(session_pk, 0))
                await runner.run()
                if runner.compacted_upto:
                    _compacted.pop(session_pk, None)
                    _compacted[session_pk] = runner.compacted_upto
                    if len(_compacted) > _COMPACTED_MAX:
                        del _compacted[next(iter(_compacted))]
                # Nothing queued behind the finished turn: skip the claim that would find nothing.
                # A message enqueued here meanwhile is in `_again`; one enqueued by another worker
                # found this session's lease held and counts on `more`, read in the finishing commit.
                if runner.finished and not runner.more and session_pk not in _again:
                    return
            except Turn.DoesNotExist:
                return  # the session was deleted under us
            except Exception as exc:  # noqa: BLE001 - a bug must end the turn, not wedge the queue
                log.exception("turn %s failed", claim.correlation_id)
                try:
                    await db(services.turn_emit)(
                        turn_pk=claim.turn_pk,
                        type="error",
                        data=error_data(f"internal error: {exc}", kind="internal", correlation_id=claim.correlation_id),
                    )
                    await db(services.turn_finish_and_peek)(
                        turn_pk=claim.turn_pk, content=f"The turn failed with an internal error: {exc}", failed=True,
                        error=f"internal error: {exc}",
                    )
                except Exception:  # noqa: BLE001
                    log.exception("could not record the failure of turn %s", claim.correlation_id)
                    return
    finally:
        _running.discard(session_pk)


class _Stop(Exception):
    def __init__(self, content: str, *, truncated: bool = False, cancelled: bool = False, record: bool = True,
                 model_calls: int = 0, error: str | None = None):
        self.content = content
        self.error = error  # the `result` event's error (the turn ended on a failure)
        self.model_calls = model_calls
        self.truncated = truncated
        self.cancelled = cancelled
        self.record = record


class _TurnRunner:
    def __init__(self, claim: services.ClaimedTurn, *, compacted_upto: int = 0):
        self.claim = claim
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
        from tooling.services import mask_secrets

        secrets = getattr(getattr(self, "app", None), "secret_values", ())
        return mask_secrets(value, secrets) if secrets else value

    def _params_for(self, call: dict) -> dict:
        """The parameters a call runs with: the plaintext the model wrote, from memory or unsealed."""
        if call["id"] in self.plain_params:
            return self.plain_params[call["id"]]
        if call["id"] in self.sealed:
            from tooling.services import unseal_secrets

            return unseal_secrets(self.sealed[call["id"]], self.app.secret_values)
        return call["params"]

    def active_seconds(self) -> float:
        return self.active_before + (time.monotonic() - self.started)

    async def emit(self, type: str, data: dict) -> None:
        # error, hook and token events may quote model output or tool input: masked like the rest.
        await db(services.turn_emit)(turn_pk=self.claim.turn_pk, type=type, data=self.mask(data), before=self._carried())

    def _carried(self) -> list[tuple[str, dict]]:
        return [(type, self.mask(data)) for type, data in self.carry.take()]

    async def _flush_carry(self) -> None:
        """Write carried events now (when no write of the turn is coming to take them along)."""
        events = self._carried()
        if events:
            type, data = events[-1]
            await db(services.turn_emit)(turn_pk=self.claim.turn_pk, type=type, data=data, before=events[:-1])

    async def _fire_hooks(self, event: str) -> None:
        """The manifest's hooks for ``event`` (conversations.hooks); their events ride the next write."""
        app, agent = getattr(self, "app", None), getattr(self, "agent", None)
        if app is None or agent is None or self.claim.depth > 0 or not hooks.wants_any(app, event):
            return
        try:
            carried, injected = await db(hooks.fire)(
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
            state = await db(services.turn_heartbeat)(turn_pk=self.claim.turn_pk, worker=WORKER_ID)
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
                payload, self.more = await db(services.turn_finish_and_peek)(
                    turn_pk=self.claim.turn_pk,
                    content=self.mask(stop.content),
                    truncated=stop.truncated,
                    cancelled=stop.cancelled,
                    record_message=stop.record,
                    model_calls=stop.model_calls,
                    unanswered=_unanswered_calls(self.transcript, self.claim.correlation_id) if self.transcript else None,
                    usage=self.usage,
                    error=stop.error,
                    events=self._carried(),
                )
                self.finished = payload is not None
                if self.finished and self.injected_at_end:
                    # turn_end's inject_message: read by the model at the session's next turn.
                    await db(hooks.inject_messages)(session_pk=self.claim.session_pk,
                                                   correlation_id=self.claim.correlation_id,
                                                   messages=self.injected_at_end)
        finally:
            heartbeat.cancel()
            try:
                await heartbeat
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    async def _setup(self) -> None:
        from conversations.brains import brain_for

        self.app, self.agent, self.transcript, tools = await db(_prepare)(
            self.claim.app_id, self.claim.agent_id, self.claim.session_pk, RECAP_MAX_ITEMS
        )
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
        self.tools, self.meta_names, self.background_names, self.risk = tools
        self.delegation_note = _delegation_note(self.app, self.agent, self.claim.depth, self.tools)

    async def _loop(self) -> None:
        from conversations.brains import BrainError
        from digitorn_site.errors import DigitornError

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
            missing = _unanswered_calls(transcript, self.claim.correlation_id)
            if missing:
                suspended = await self._run_calls(missing)
                if suspended:
                    return
                continue
            if self.turns_used >= self.max_turns:
                last = _last_assistant_text(transcript, self.claim.correlation_id)
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
            self._remember(
                await db(services.turn_record_reply)(
                    turn_pk=self.claim.turn_pk, text=self.mask(reply.text or ""), tool_calls=shown, sealed=sealed
                )
            )

    def _shown_calls(self, calls: list[dict]) -> tuple[list[dict], dict[str, Any]]:
        """The calls as stored and emitted (secrets masked), and the sealed parameters of those
        that held a secret; the plaintext stays in ``plain_params`` for this process only."""
        secrets = self.app.secret_values
        if not secrets:
            return calls, {}
        from tooling.services import mask_secrets, seal_secrets

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
        last = _last_assistant_text(transcript, self.claim.correlation_id)
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
            text, held = _split_before_secret_prefix(text, getattr(self.app, "secret_values", ()))
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
            memory = await db(working_memory_text)(self.app.app_id, self.claim.session_id)
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
            cut = _stable_cut(transcript, window, self.compacted_upto)
            if cut > 0:
                older, body = transcript[:cut], transcript[cut:]
                if strategy != "truncate":
                    system.append({"role": "system", "content": _recap(older)})
                upto = older[-1].pk
                if upto != self.compacted_upto:
                    self.compacted_upto = upto
                    await db(services.turn_compacted)(
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
        return system + _to_brain(body)

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
            await self._mark_started(batch)
            # The batch carries the plaintext the calls need; the events carry the masked form.
            await db(services.turn_tool_start)(
                turn_pk=self.claim.turn_pk, calls=[{**c, "params": self.mask(c["params"])} for c in batch],
                before=self._carried(),
            )
            outcomes = await asyncio.gather(*(self._invoke(c, None) for c in batch))
            for call, outcome in zip(batch, outcomes, strict=True):
                await self._record(call, outcome)
            batch.clear()

        for call in calls:
            self._check()
            if call["id"] in self.waits:
                await flush_batch()
                answer = await db(wait_outcome)(self.waits[call["id"]])
                if answer is None:
                    waiting = True
                    continue
                self.waits.pop(call["id"], None)
                self._remember(
                    await db(services.turn_record_wait_result)(
                        turn_pk=self.claim.turn_pk, call_id=call["id"], name=call["name"], result=self.mask(answer),
                        params=self.mask(call["params"]),
                    )
                )
                continue
            # A delegation started before a crash is found again by its call id, not started twice.
            if call["id"] in self.started_calls and not self._read_only(call) and not _is_delegation(self.app, call):
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
                    await self._mark_started([call])
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
            await self._mark_started([call])
            await self._invoke_and_record(call, None)
        await flush_batch()
        if waiting or self.waits or any(rid not in decisions for rid in pending.values()):
            self._check()
            await self._flush_carry()  # nothing else of this turn is written before it suspends
            suspended = await db(services.turn_suspend)(
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

    def _read_only(self, call: dict) -> bool:
        return _is_read_only(self.app, call["name"], call.get("params"))

    async def _mark_started(self, calls: list[dict]) -> None:
        """Commit the "started" mark of the calls that have side effects, before they run."""
        ids = [c["id"] for c in calls if not self._read_only(c)]
        if ids:
            await db(services.turn_calls_started)(turn_pk=self.claim.turn_pk, call_ids=ids)
            self.started_calls.update(ids)

    async def _record(self, call: dict, outcome: dict) -> None:
        if outcome["status"] == "wait":
            self.waits[call["id"]] = outcome["wait"]
            await db(services.turn_record_wait)(turn_pk=self.claim.turn_pk, call_id=call["id"], wait=outcome["wait"])
            return
        if outcome["status"] == "pending_approval":
            self.started_calls.discard(call["id"])
            self.pending[call["id"]] = outcome["request_id"]
            await db(services.turn_record_pending)(
                turn_pk=self.claim.turn_pk,
                call_id=call["id"],
                name=call["name"],
                params=self.mask(call["params"]),
                request_id=outcome["request_id"],
            )
            return
        self._remember(
            await db(services.turn_record_result)(
                turn_pk=self.claim.turn_pk, call_id=call["id"], name=call["name"], result=self.mask(outcome["result"]),
                params=self.mask(call["params"]),
            )
        )

    async def _invoke_and_record(self, call: dict, approval_request_id: str | None) -> None:
        """One call run and recorded in a single thread hop (two transactions: the tool's, then ours)."""
        outcome, message = await db(_invoke_and_record_sync)(
            turn_pk=self.claim.turn_pk, before=self._carried() if approval_request_id is None else None,
            **self._invoke_kwargs(call, approval_request_id)
        )
        if outcome["status"] == "wait":
            self.waits[call["id"]] = outcome["wait"]
        elif message is None:
            self.started_calls.discard(call["id"])
            self.pending[call["id"]] = outcome["request_id"]
        else:
            self._remember(message)

    async def _invoke(self, call: dict, approval_request_id: str | None) -> dict:
        return await db(_invoke_sync)(**self._invoke_kwargs(call, approval_request_id))

    def _invoke_kwargs(self, call: dict, approval_request_id: str | None) -> dict:
        return dict(
            app=self.app,
            call=call,
            claim=self.claim,
            agent_id=self.agent.id,
            meta=call["name"] in self.meta_names,
            background=call["name"] in self.background_names,
            approval_request_id=approval_request_id,
            cancel_check=lambda: self.cancelled,
        )


# --- sync helpers (run in worker threads) ----------------------------------------------------


def _split_before_secret_prefix(text: str, secrets: tuple[str, ...]) -> tuple[str, str]:
    """``text`` cut before its longest tail that begins some secret: (safe to emit, to hold back)."""
    cut = len(text)
    for secret in secrets:
        for size in range(min(len(secret) - 1, len(text)), 0, -1):
            if text.endswith(secret[:size]):
                cut = min(cut, len(text) - size)
                break
    return text[:cut], text[cut:]


_READ_ONLY_META = {"search_tools", "get_tool", "list_categories", "browse_category", "background_status"}


def _is_read_only(app, name: str, params: Any) -> bool:
    """Whether a call may safely run twice: its tool declares only the ``read_only`` side effect.

    Unknown tools count as having side effects; ``execute_tool`` is judged by the tool it runs."""
    from tooling.index import cached_index

    if name in _READ_ONLY_META:
        return True
    if name == "execute_tool":
        name = str((params or {}).get("name") or "") if isinstance(params, dict) else ""
    try:
        spec = cached_index(app).resolve(name)
    except Exception:  # noqa: BLE001 - unknown or ambiguous: assume it changes something
        return False
    return set(spec.side_effects) <= {"read_only"}


def _is_delegation(app, call: dict) -> bool:
    """agent_spawn calls: re-running one after a crash finds the runs it started (by call id)."""
    from tooling.index import cached_index

    name = call["name"]
    if name == "execute_tool":
        params = call.get("params")
        name = str(params.get("name") or "") if isinstance(params, dict) else ""
    try:
        return cached_index(app).resolve(name).module == "agent_spawn"
    except Exception:  # noqa: BLE001 - unknown: not a delegation
        return False


def _delegation_note(app, agent, depth: int, tools: list[dict]) -> str:
    """What a model needs to delegate well (the original's "Agent Pool" prompt section): the agents
    it may hand tasks to, and, for a delegated run, whom its answer goes to."""
    lines: list[str] = []
    if depth > 0:
        lines.append("You are running a task delegated by another agent: it cannot see this conversation and "
                     "reads only your final answer, so end with a complete, self-contained answer.")
    if any(t["name"].startswith("agent_spawn.") for t in tools) or any(t["name"] == "search_tools" for t in tools):
        targets = list(agent.delegate_to) or ([] if depth > 0 else [a.id for a in app.agents if a.id != agent.id])
        reachable = "agent_spawn" in app.modules and (agent.modules is None or "agent_spawn" in agent.modules)
        if targets and reachable:
            lines.append("Agents you can delegate a self-contained task to with agent_spawn.agent(agent=<id>, "
                         "task=...):")
            specs = {a.id: a for a in app.agents}
            for target in targets:
                spec = specs.get(target)
                what = (spec.specialty or spec.name) if spec is not None else ""
                lines.append(f"- {target}" + (f": {what}" if what and what != target else ""))
    return "\n".join(lines)


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
    from tooling.modules.memory import working_memory

    return working_memory(app_id=app_id, session_id=session_id)


def _tools_for(app, agent_id: str) -> tuple[list[dict], set[str], set[str], dict[str, str]]:
    from tooling.background import background_meta_tools
    from tooling.index import injection_mode
    from tooling.registry import BACKGROUND_META_TOOL_NAMES, DISCOVERY_META_TOOL_NAMES
    from tooling.selectors import meta_tools, tools_for_agent

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
    return tools, set(DISCOVERY_META_TOOL_NAMES), set(BACKGROUND_META_TOOL_NAMES), risk


def _invoke_sync(
    *,
    app,
    call: dict,
    claim: services.ClaimedTurn,
    agent_id: str,
    meta: bool,
    background: bool,
    approval_request_id: str | None,
    cancel_check: Callable[[], bool],
) -> dict:
    from conversations.delegation import CURRENT, DelegationCall

    delegation = DelegationCall(turn_pk=claim.turn_pk, call_id=call["id"], loop=main_loop())
    token = CURRENT.set(delegation)
    try:
        outcome = _invoke_tool(app=app, call=call, claim=claim, agent_id=agent_id, meta=meta, background=background,
                               approval_request_id=approval_request_id, cancel_check=cancel_check)
    finally:
        CURRENT.reset(token)
    if delegation.wait is not None and outcome["status"] == "ok":
        # A call that waits for delegated runs: the turn suspends until they end (no thread held).
        return {"status": "wait", "wait": delegation.wait}
    return outcome


def _invoke_tool(
    *,
    app,
    call: dict,
    claim: services.ClaimedTurn,
    agent_id: str,
    meta: bool,
    background: bool,
    approval_request_id: str | None,
    cancel_check: Callable[[], bool],
) -> dict:
    from digitorn_site.errors import DigitornError

    params = call["params"] if isinstance(call["params"], dict) else {}
    try:
        if background:
            from tooling.background import background_meta_invoke

            result = background_meta_invoke(
                app=app,
                name=call["name"],
                params=params,
                principal=claim.principal,
                session_id=claim.session_id,
                agent_id=agent_id,
            )
            return {"status": "ok" if result.get("success") else "error", "result": result}
        if meta:
            from tooling.meta import meta_tool_invoke

            outcome = meta_tool_invoke(
                app=app,
                name=call["name"],
                params=params,
                caller=f"agent:{agent_id}",
                principal=claim.principal,
                session_id=claim.session_id,
                agent_id=agent_id,
                # execute_tool goes through the same gate: a resumed call must present its approval.
                approval_request_id=approval_request_id,
                origin_ref=call["id"],
                cancel_check=cancel_check,
            )
        else:
            from tooling.services import tool_invoke

            outcome = tool_invoke(
                app=app,
                tool_name=call["name"],
                params=params,
                caller=f"agent:{agent_id}",
                principal=claim.principal,
                session_id=claim.session_id,
                agent_id=agent_id,
                approval_request_id=approval_request_id,
                origin="agent",
                origin_ref=call["id"],
                cancel_check=cancel_check,
            )
    except DigitornError as exc:
        # Bad params, unknown tool (with its did-you-mean): the model reads the message and retries.
        return {"status": "error", "result": {"success": False, "data": None, "error": exc.message}}
    if outcome.status == "pending_approval":
        return {"status": "pending_approval", "request_id": outcome.request_id}
    return {"status": outcome.status, "result": outcome.as_result()}


def _prepare(app_id: str, agent_id: str, session_pk: int, extra: int) -> tuple[Any, Any, list[Message], tuple | None]:
    """Runtime app, agent, transcript and tools in one thread hop (the window comes from the app).

    The agent is None when the app declares none.
    """
    from apps_registry.selectors import app_runtime

    app = app_runtime(app_id=app_id)
    window = max(int(app.runtime.context_window_messages or 0), 4)
    transcript = _load_transcript(session_pk, window + extra)
    if not app.agents:
        return app, None, transcript, None
    try:
        agent = app.agent(agent_id or None)
    except KeyError:
        agent = app.agent()
    return app, agent, transcript, _tools_for(app, agent.id)


def _invoke_and_record_sync(
    *, turn_pk: int, before: list[tuple[str, dict]] | None = None, **kwargs: Any
) -> tuple[dict, Message | None]:
    from tooling.services import mask_secrets

    call = kwargs["call"]
    secrets = kwargs["app"].secret_values
    if kwargs["approval_request_id"] is None:
        # A call resumed after its approval had its tool_start before the request.
        services.turn_tool_start(turn_pk=turn_pk, calls=[{**call, "params": mask_secrets(call["params"], secrets)}],
                                 before=before)
    outcome = _invoke_sync(**kwargs)
    if outcome["status"] == "wait":
        services.turn_record_wait(turn_pk=turn_pk, call_id=call["id"], wait=outcome["wait"])
        return outcome, None
    if outcome["status"] == "pending_approval":
        services.turn_record_pending(
            turn_pk=turn_pk, call_id=call["id"], name=call["name"], params=mask_secrets(call["params"], secrets),
            request_id=outcome["request_id"],
        )
        return outcome, None
    message = services.turn_record_result(
        turn_pk=turn_pk, call_id=call["id"], name=call["name"], result=mask_secrets(outcome["result"], secrets),
        params=mask_secrets(call["params"], secrets),
    )
    return outcome, message


class _Msg:
    """A transcript row with the attributes the loop reads (``Message`` quacks the same way);
    building model instances cost more than the query for a long transcript."""

    __slots__ = ("pk", "role", "content", "tool_calls", "tool_call_id", "name", "correlation_id")
    FIELDS = ("pk", "role", "content", "tool_calls", "tool_call_id", "name", "correlation_id")

    def __init__(self, *values: Any):
        for attr, value in zip(self.FIELDS, values, strict=True):
            setattr(self, attr, value)


def _load_transcript(session_pk: int, limit: int) -> list[Message]:
    """The latest ``limit`` messages, oldest first (older ones only ever fed the recap)."""
    # Raw (fastsql): read before every model call, where the ORM's compilation cost ~0.6 ms.
    rows = [
        _Msg(*values)
        for values in fastsql.messages_tail(session_pk, ("id", *_Msg.FIELDS[1:]), limit)
    ]
    rows.reverse()
    return rows


def _unanswered_calls(transcript: list[Message], correlation_id: str) -> list[dict]:
    """Calls of this turn's latest assistant reply that have no tool result yet (resume point)."""
    for index in range(len(transcript) - 1, -1, -1):
        message = transcript[index]
        if message.correlation_id != correlation_id:
            return []
        if message.role == Message.Role.ASSISTANT:
            if not message.tool_calls:
                return []
            answered = {m.tool_call_id for m in transcript[index + 1 :] if m.role == Message.Role.TOOL}
            return [c for c in message.tool_calls if c.get("id") not in answered]
        if message.role == Message.Role.USER:
            return []
    return []


def _last_assistant_text(transcript: list[Message], correlation_id: str) -> str:
    for message in reversed(transcript):
        if message.correlation_id != correlation_id:
            break
        if message.role == Message.Role.ASSISTANT and message.content:
            return message.content
    return ""


def _to_brain(messages: list[Message]) -> list[dict]:
    out: list[dict] = []
    for m in messages:
        if m.role == Message.Role.ASSISTANT:
            item: dict[str, Any] = {"role": "assistant", "content": m.content}
            if m.tool_calls:
                item["tool_calls"] = [{"id": c["id"], "name": c["name"], "params": c.get("params", {})} for c in m.tool_calls]
            out.append(item)
        elif m.role == Message.Role.TOOL:
            out.append({"role": "tool", "content": m.content, "tool_call_id": m.tool_call_id, "name": m.name})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def _compaction_cut(transcript: list[Message], window: int) -> int:
    """Index where the kept tail starts: about ``window`` messages, never inside a call/result pair."""
    cut = len(transcript) - window
    while cut < len(transcript) and transcript[cut].role == Message.Role.TOOL:
        cut += 1
    if cut >= len(transcript):
        return 0
    return max(cut, 0)


def _stable_cut(transcript: list[Message], window: int, compacted_upto: int) -> int:
    """The previous cut while the tail after it still fits the window, else a new one that keeps
    ``RECOMPACT_KEEP`` of the window (so the cut moves once per several steps, not at each)."""
    if compacted_upto:
        for index in range(len(transcript) - 1, -1, -1):
            pk = transcript[index].pk
            if pk == compacted_upto:
                if 0 < len(transcript) - (index + 1) <= window:
                    return index + 1
                break
            if pk < compacted_upto:
                break
    return _compaction_cut(transcript, max(int(window * RECOMPACT_KEEP), 2))


def _clip(text: str) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= RECAP_ITEM_CHARS else text[: RECAP_ITEM_CHARS - 1] + "…"


def _recap(older: list[Message]) -> str:
    lines = ["Recap of earlier messages of this conversation (compacted to fit the context window):"]
    for m in older:
        if m.role == Message.Role.ASSISTANT and m.tool_calls:
            names = ", ".join(c.get("name", "?") for c in m.tool_calls)
            lines.append(f"- assistant called {names}" + (f": {_clip(m.content)}" if m.content else ""))
        elif m.role == Message.Role.TOOL:
            try:
                ok = json.loads(m.content).get("success")
            except (ValueError, AttributeError):
                ok = None
            lines.append(f"- {m.name} returned {'ok' if ok else 'an error' if ok is False else 'a result'}: {_clip(m.content)}")
        else:
            lines.append(f"- {m.role}: {_clip(m.content)}")
    return "\n".join(lines)
