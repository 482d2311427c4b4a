"""The turn's fused steps (issue 14): the claim and the turn's preparation in one thread hop, the
reply asking for tools written at the start of the hop that runs them, the state writes given the
turn's correlation id and session instead of re-reading them — with the same rows, events and
crash recovery as one hop per step."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.utils import timezone

from conversations import queue, services
from conversations.models import Event, Message, Session, Turn
from conversations.turns import state as turn_state
from conversations.turns import wakeup
from conversations.turns.runner import WORKER_ID, _invoke_and_record_sync, claim_and_prepare, prepare_claimed
from conversations.turns.scheduler import advance_session
from conversations.turns.state import turn_record_result, turn_tool_start
from digitorn_site.asyncdb import db
from tests.helpers import deploy, make_workspace, scripted_manifest
from tooling.models import ToolExecution
from tooling.modules._workspace import _within

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return make_workspace(tmp_path, {"README.md": "# Demo project\n"})


def _send(app_id: str, message: str) -> services.Enqueued:
    return services.message_enqueue(app_id=app_id, session_id="s1", principal="alice", message=message)


def test_claim_and_prepare_reads_the_transcript_the_claim_wrote(ws):
    deploy(scripted_manifest("hops", ws, [{"steps": [{"say": "hello"}]}]))
    enq = _send("hops", "first words")
    claim, prepared = claim_and_prepare(session_pk=enq.session_pk, worker="w1")
    assert claim is not None and claim.correlation_id == enq.correlation_id
    app, agent, transcript, tools = prepared
    assert app.app_id == "hops" and agent.id == "assistant" and tools is not None
    # The claim committed the user message before the preparation read the transcript.
    assert [(m.role, m.content) for m in transcript] == [("user", "first words")]
    # Nothing else claimable for another worker while this lease holds.
    assert claim_and_prepare(session_pk=enq.session_pk, worker="w2") == (None, None)


def test_a_reply_written_as_the_runner_defers_it_is_resumed_after_a_crash(ws):
    """The runner hands turn_record_reply the message already in its transcript; a worker killed
    right after that write leaves a turn the next worker finishes from that reply, without asking the
    model again nor writing the reply twice."""
    deploy(scripted_manifest("hops", ws, [{"steps": [
        {"call": "filesystem.read", "params": {"path": "README.md"}},
        {"say": "done: {result}"},
    ]}]))
    enq = _send("hops", "read it")
    claim = turn_state.turn_claim(session_pk=enq.session_pk, worker="dead-worker")
    call = {"id": "call_1", "name": "filesystem.read", "params": {"path": "README.md"}}
    message = Message(session_id=claim.session_pk, role=Message.Role.ASSISTANT, content="",
                      tool_calls=[call], correlation_id=claim.correlation_id)
    written = turn_state.turn_record_reply(turn_pk=claim.turn_pk, text="", tool_calls=[call], message=message,
                                         session_pk=claim.session_pk)
    assert written is message and message.pk is not None
    assert Message.objects.get(pk=message.pk).tool_calls == [call]
    Turn.objects.filter(pk=claim.turn_pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    async_to_sync(advance_session)(session_pk=enq.session_pk)
    turn = Turn.objects.get(pk=claim.turn_pk)
    assert turn.status == Turn.Status.DONE and turn.tool_calls_count == 1
    roles = list(Message.objects.filter(session_id=enq.session_pk).order_by("id").values_list("role", flat=True))
    assert roles == ["user", "assistant", "tool", "assistant"]
    types = [e.type for e in Event.objects.filter(session_id=enq.session_pk).order_by("seq")
             if e.type in ("tool_start", "tool_call", "result")]
    assert types == ["tool_start", "tool_call", "result"]
    assert "Demo project" in turn.result["content"]


def test_writes_given_the_turns_link_still_find_a_deleted_session(ws):
    """Without the re-read of the turn row, a session deleted under the turn still ends it as gone."""
    deploy(scripted_manifest("hops", ws, [{"steps": [{"say": "hello"}]}]))
    enq = _send("hops", "hi")
    claim = turn_state.turn_claim(session_pk=enq.session_pk, worker="w1")
    link = (claim.correlation_id, claim.session_pk)
    Session.objects.filter(pk=claim.session_pk).delete()
    with pytest.raises(Turn.DoesNotExist):
        turn_tool_start(turn_pk=claim.turn_pk, calls=[{"id": "c", "name": "filesystem.ls", "params": {}}], link=link)
    with pytest.raises(Turn.DoesNotExist):
        turn_record_result(turn_pk=claim.turn_pk, call_id="c", name="filesystem.ls",
                           result={"success": True, "data": {}}, link=link)
    assert not Message.objects.filter(correlation_id=claim.correlation_id).exists()


@pytest.mark.parametrize(("path", "base"), [
    ("/usr", "/usr"), ("/usr/lib", "/usr"), ("/usrlocal", "/usr"), ("/us", "/usr"), ("/", "/"),
    ("/etc/x", "/"), ("/var/lib/x/y", "/var/lib"), ("/var/library", "/var/lib"), ("/a/b", "/a/b/c"),
])
def test_workspace_containment_as_strings_matches_paths(path, base):
    assert _within(path, base) == Path(path).is_relative_to(base)


def test_a_reply_of_several_read_calls_starts_them_together_after_the_reply(ws):
    """Read-only calls of one reply: the reply, then every tool_start, then their results, in order."""
    deploy(scripted_manifest("hops", ws, [{"steps": [
        {"calls": [{"call": "filesystem.read", "params": {"path": "README.md"}},
                   {"call": "filesystem.ls", "params": {"path": "."}}]},
        {"say": "both read"},
    ]}]))
    enq = _send("hops", "read both")
    async_to_sync(advance_session)(session_pk=enq.session_pk)
    evs = list(Event.objects.filter(session_id=enq.session_pk).order_by("seq"))
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))
    types = [e.type for e in evs if e.type in ("tool_start", "tool_call", "result")]
    assert types == ["tool_start", "tool_start", "tool_call", "tool_call", "result"]
    messages = list(Message.objects.filter(session_id=enq.session_pk).order_by("id"))
    assert [m.role for m in messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert [c["name"] for c in messages[1].tool_calls] == ["filesystem.read", "filesystem.ls"]
    assert Turn.objects.get(correlation_id=enq.correlation_id).result["content"] == "both read"


# --- the claim made by the enqueue, the audit row in the tool_start's transaction ---------------

READ_AND_SAY = [{"steps": [{"call": "filesystem.read", "params": {"path": "README.md"}}, {"say": "done: {result}"}]}]


def _types(session_pk: int) -> list[str]:
    return list(Event.objects.filter(session_id=session_pk).order_by("seq").values_list("type", flat=True))


def test_a_message_accepted_in_a_worker_is_claimed_in_its_transaction(ws):
    """Accepted under the worker's event loop, with nothing ahead of it: the turn is leased, opened
    (status, user message) in the accept's transaction; the runner started next takes that claim
    without claiming again, and the turn's rows and events are those of a turn claimed by itself."""
    deploy(scripted_manifest("hops", ws, READ_AND_SAY))
    reference = _send("hops", "read it")  # no event loop: queued, claimed by the runner
    async_to_sync(advance_session)(session_pk=reference.session_pk)

    async def go():
        enq, _ = await db(queue.message_accept)(app_id="hops", session_id="s2", principal="alice", message="read it")
        turn = await db(Turn.objects.get)(correlation_id=enq.correlation_id)
        assert (turn.status, turn.lease_owner, turn.attempts) == (Turn.Status.RUNNING, WORKER_ID, 1)
        opened = await db(lambda: [(m.role, m.content) for m in Message.objects.filter(session_id=enq.session_pk)])()
        assert opened == [("user", "read it")]
        # Held for this worker's runner: no other claim in this process takes it meanwhile.
        assert await db(claim_and_prepare)(session_pk=enq.session_pk, worker=WORKER_ID) == (None, None)
        await advance_session(session_pk=enq.session_pk)
        return enq

    enq = async_to_sync(go)()
    turn = Turn.objects.get(correlation_id=enq.correlation_id)
    assert turn.status == Turn.Status.DONE and turn.attempts == 1 and turn.tool_calls_count == 1
    assert "Demo project" in turn.result["content"]
    assert _types(enq.session_pk) == _types(reference.session_pk)
    assert [e.seq for e in Event.objects.filter(session_id=enq.session_pk).order_by("seq")] == list(
        range(1, len(_types(enq.session_pk)) + 1))
    roles = lambda pk: list(Message.objects.filter(session_id=pk).order_by("id").values_list("role", flat=True))  # noqa: E731
    assert roles(enq.session_pk) == roles(reference.session_pk) == ["user", "assistant", "tool", "assistant"]
    assert Session.objects.get(pk=enq.session_pk).status == Session.Status.IDLE


def test_a_turn_claimed_at_accept_whose_worker_died_is_recovered_once(ws):
    """The accept committed the claim, then the worker died before its runner took it: once the
    lease expires the turn is claimed again and runs once, its opening writes not repeated."""
    deploy(scripted_manifest("hops", ws, READ_AND_SAY))

    async def accept():
        enq, _ = await db(queue.message_accept)(app_id="hops", session_id="s1", principal="alice", message="read it")
        return enq

    enq = async_to_sync(accept)()
    wakeup._preclaimed.clear()  # what a dead worker's memory held
    Turn.objects.filter(correlation_id=enq.correlation_id).update(
        lease_owner="dead-worker", lease_expires_at=timezone.now() - timedelta(seconds=1))
    async_to_sync(advance_session)(session_pk=enq.session_pk)
    turn = Turn.objects.get(correlation_id=enq.correlation_id)
    assert turn.status == Turn.Status.DONE and turn.attempts == 2
    roles = list(Message.objects.filter(session_id=enq.session_pk).order_by("id").values_list("role", flat=True))
    assert roles == ["user", "assistant", "tool", "assistant"]
    types = _types(enq.session_pk)
    assert types.count("result") == 1 and types[0] == "status"


def test_a_second_message_accepted_while_a_turn_runs_is_queued_not_claimed(ws):
    deploy(scripted_manifest("hops", ws, READ_AND_SAY))

    async def go():
        first, _ = await db(queue.message_accept)(app_id="hops", session_id="s1", principal="alice", message="one")
        second, _ = await db(queue.message_accept)(app_id="hops", session_id="s1", principal="alice", message="two")
        assert (first.position, second.position) == (0, 1)
        status = await db(lambda: Turn.objects.get(correlation_id=second.correlation_id).status)()
        assert status == Turn.Status.QUEUED
        await advance_session(session_pk=first.session_pk)
        return first, second

    first, second = async_to_sync(go)()
    done = Turn.objects.filter(correlation_id__in=[first.correlation_id, second.correlation_id])
    assert {t.status for t in done} == {Turn.Status.DONE}
    assert _types(first.session_pk).count("message_queued") == 1


def test_a_read_calls_audit_row_is_committed_with_its_tool_start_and_closed_with_its_result(ws):
    """No transaction of its own for the audit row of a read-only call: it is written in the
    transaction of the call's tool_start, committed before the call runs (a call that ran always has
    its row; one cut by a crash keeps the "interrupted" one), and its outcome with the result."""
    deploy(scripted_manifest("hops", ws, READ_AND_SAY))
    enq = _send("hops", "read it")
    claim = turn_state.turn_claim(session_pk=enq.session_pk, worker="w1")
    app, agent, _transcript, _tools = prepare_claimed(claim)
    call = {"id": "call_1", "name": "filesystem.read", "params": {"path": "README.md"}}
    turn_state.turn_record_reply(turn_pk=claim.turn_pk, text="", tool_calls=[call])
    log: list[str] = []

    def record(execute, sql, params, many, context):
        words = sql.split()
        verb = words[0].upper()
        table = {"INSERT": 2, "UPDATE": 1}.get(verb)  # INSERT INTO "t" / UPDATE "t"
        log.append(verb if table is None else f"{verb} {words[table].strip(chr(34))}")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):  # the runner's thread hop, run in this thread
        outcome, message = _invoke_and_record_sync(
            turn_pk=claim.turn_pk, app=app, call=call, claim=claim, agent_id=agent.id, approval_request_id=None,
            cancel_check=lambda: False,
        )
    assert outcome["status"] == "ok" and message.pk
    assert log[0] == "BEGIN"  # nothing written outside the turn's transactions (no autocommit INSERT)
    blocks: list[list[str]] = []
    for entry in log:
        if entry == "BEGIN":
            blocks.append([])
        elif blocks:
            blocks[-1].append(entry)
    audit = [b for b in blocks if any("tooling_toolexecution" in s for s in b)]
    assert len(audit) == 2, blocks
    assert "INSERT tooling_toolexecution" in audit[0] and "INSERT conversations_event" in audit[0]
    assert "UPDATE tooling_toolexecution" in audit[1] and "INSERT conversations_message" in audit[1]
    row = ToolExecution.objects.get()
    assert (row.tool, row.outcome, row.error, row.caller) == ("filesystem.read", "ok", "", "agent:assistant")
    assert row.duration_ms > 0

