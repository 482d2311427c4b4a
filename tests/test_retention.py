"""Retention (issue 14): what the periodic pruning removes, what it keeps, and the stream's answer to
a cursor older than the retained log."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient
from django.utils import timezone

from conversations import services
from conversations.events import event_append
from conversations.models import Event, Message, Session, Turn
from tests.helpers import HEADERS, make_workspace, scripted_manifest
from tests.test_security_holes import _read_until
from tooling.models import ToolExecution

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def app(tmp_path: Path, deployed_app) -> str:
    ws = make_workspace(tmp_path)
    deployed_app(scripted_manifest("keep", ws, [{"steps": [{"say": "echo: {message}"}]}]), force=True)
    return "keep"


def _session(sid: str, *, idle_days: float = 0, app_id: str = "keep", principal: str = "admin") -> Session:
    session = Session.objects.create(app_id=app_id, session_id=sid, principal=principal)
    for i in range(3):
        event_append(session=session, type="t", data={"i": i})
    Message.objects.create(session=session, role="user", content=f"hello {sid}")
    if idle_days:
        Session.objects.filter(pk=session.pk).update(last_active=timezone.now() - timedelta(days=idle_days))
    return session


def test_expired_sessions_go_with_their_transcript_and_events_and_only_they(app):
    old = _session("old", idle_days=2)  # the default idle timeout is one hour
    busy = _session("busy", idle_days=2)
    Turn.objects.create(session=busy, kind="message", status=Turn.Status.WAITING_APPROVAL, correlation_id="c1")
    fresh = _session("fresh")

    assert services.sessions_prune_expired() == 1
    assert set(Session.objects.values_list("session_id", flat=True)) == {"busy", "fresh"}
    assert not Event.objects.filter(session_id=old.pk).exists()
    assert not Message.objects.filter(session_id=old.pk).exists()
    assert Event.objects.filter(session_id=fresh.pk).count() == 3
    assert Event.objects.filter(session_id=busy.pk).count() == 3  # waiting on a human: kept


def test_events_older_than_the_cutoff_are_pruned_and_newer_ones_kept(app):
    a, b = _session("a"), _session("b")
    more = [event_append(session=Session.objects.get(pk=a.pk), type="t", data={}) for _ in range(4)]
    # Ids grow with time: the three first events of each session are old, the last four are new.
    old_ids = list(Event.objects.filter(id__lt=more[0].id).values_list("id", flat=True))
    Event.objects.filter(id__in=old_ids).update(created_at=timezone.now() - timedelta(days=40))

    pruned = services.events_prune_older_than(cutoff=timezone.now() - timedelta(days=30), batch=2)
    assert pruned == len(old_ids) == 6
    assert list(Event.objects.filter(session_id=a.pk).values_list("seq", flat=True)) == [4, 5, 6, 7]
    assert not Event.objects.filter(session_id=b.pk).exists()
    assert Session.objects.filter(pk=b.pk).exists()  # the session and its transcript stay
    assert Message.objects.filter(session_id=b.pk).exists()
    assert services.events_prune_older_than(cutoff=timezone.now() - timedelta(days=30)) == 0


def test_audit_rows_of_gone_sessions_are_pruned_when_old(app):
    _session("live")
    cutoff = timezone.now() - timedelta(days=30)
    rows = {
        name: ToolExecution.objects.create(app_id="keep", tool="filesystem.read", caller="agent:a",
                                           principal="admin", session_id=sid, outcome="ok")
        for name, sid in (("live_old", "live"), ("gone_old", "gone"), ("gone_new", "gone"), ("api_old", None))
    }
    ToolExecution.objects.filter(pk__in=[rows[n].pk for n in ("live_old", "gone_old", "api_old")]).update(
        created_at=cutoff - timedelta(days=1)
    )
    assert services.audit_prune_older_than(cutoff=cutoff) == 2
    left = set(ToolExecution.objects.values_list("pk", flat=True))
    assert left == {rows["live_old"].pk, rows["gone_new"].pk}


def test_retention_days_zero_keeps_events_forever(app, settings):
    session = _session("s")
    Event.objects.update(created_at=timezone.now() - timedelta(days=4000))
    settings.DIGITORN_RETENTION_DAYS = 0
    assert services.retention_prune() == {"sessions": 0, "events": 0, "tool_executions": 0}
    settings.DIGITORN_RETENTION_DAYS = 30
    assert services.retention_prune()["events"] == 3
    assert Session.objects.filter(pk=session.pk).exists()


@pytest.mark.usefixtures("admin_key")
def test_a_cursor_older_than_the_retained_log_gets_a_clear_error_then_the_rest(app):
    session = _session("s")  # seqs 1..3
    for _ in range(2):
        event_append(session=Session.objects.get(pk=session.pk), type="late", data={})  # 4, 5
    Event.objects.filter(session_id=session.pk, seq__lte=3).delete()  # as retention would

    async def read(since: int) -> list[str]:
        client = AsyncClient()
        response = await client.get(f"/api/apps/keep/sessions/s/events?since={since}",
                                    headers=HEADERS)
        assert response.status_code == 200
        frames = await _read_until(response.streaming_content, lambda f: f.startswith("id: 5"))
        await response.streaming_content.aclose()
        return frames

    frames = async_to_sync(read)(1)
    assert frames[0].startswith("event: error")
    error = json.loads(frames[0].split("data: ", 1)[1])
    assert error["code"] == "cursor_expired" and error["retry"] is False and error["resume_after"] == 3
    assert [f.split("\n")[0] for f in frames[1:]] == ["id: 4", "id: 5"]

    # A cursor inside the retained log: no error, just what follows it.
    frames = async_to_sync(read)(3)
    assert [f.split("\n")[0] for f in frames] == ["id: 4", "id: 5"]
