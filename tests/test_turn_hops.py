"""The turn's fused steps (issue 14): the claim and the turn's preparation in one thread hop, the
reply asking for tools written at the start of the hop that runs them, the state writes given the
turn's correlation id and session instead of re-reading them — with the same rows, events and
crash recovery as one hop per step."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from conversations import services
from conversations.models import Event, Message, Session, Turn
from conversations.turns import state as turn_state
from conversations.turns.runner import claim_and_prepare
from conversations.turns.scheduler import advance_session
from conversations.turns.state import turn_record_result, turn_tool_start
from tests.helpers import deploy, make_workspace, scripted_manifest
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
