"""queue.message_accept: what a message-taking POST does in one trip to a thread (app, rate limit,
enqueue in one transaction), on the real database. The session is found and touched by its key in
one statement; these cases take the other way (session_resolve) and must end as it always did."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from apps_registry import services as registry
from conversations.models import Event, RateLimitHit, Session, Turn
from conversations.queue import message_accept
from digitorn_site.errors import NotFoundError, QueueFullError, RateLimitError, ValidationError
from tests.helpers import scripted_manifest

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def app(tmp_path: Path) -> str:
    registry.app_deploy(text=scripted_manifest("acc", tmp_path, [{"steps": [{"say": "x"}]}]), force=True)
    return "acc"


def accept(session_id: str = "s1", principal: str = "alice", message: str = "hi"):
    return message_accept(app_id="acc", session_id=session_id, principal=principal, message=message)


def test_first_message_creates_the_session_then_reuses_it(app):
    first, limit = accept()
    assert (first.position, first.queue_depth, first.after_seq) == (0, 1, 0)
    assert limit.current == 1 and limit.headers()["X-RateLimit-Remaining"] == str(limit.limit - 1)
    Turn.objects.update(status=Turn.Status.DONE)
    Session.objects.filter(pk=first.session_pk).update(last_seq=7)
    second, limit = accept()
    assert second.session_pk == first.session_pk and second.after_seq == 7 and limit.current == 2
    assert Session.objects.get(pk=first.session_pk).last_active > Session.objects.get(pk=first.session_pk).created_at


def test_a_message_behind_a_running_turn_is_queued_with_its_event(app):
    first, _ = accept()
    second, _ = accept(message="again")
    assert (second.session_pk, second.position, second.queue_depth) == (first.session_pk, 1, 2)
    queued = Event.objects.get(session_id=first.session_pk, type="message_queued")
    assert queued.correlation_id == second.correlation_id and queued.seq == second.after_seq + 1


def test_an_idle_expired_session_is_replaced(app, settings):
    old, _ = accept()
    Turn.objects.update(status=Turn.Status.DONE)
    settings.DIGITORN_SESSION_IDLE_SECONDS = 60
    Session.objects.update(last_active=timezone.now() - timedelta(seconds=120))
    new, _ = accept()
    assert new.session_pk != old.session_pk and new.after_seq == 0
    assert not Session.objects.filter(pk=old.session_pk).exists()


def test_an_idle_session_with_an_active_turn_is_kept(app, settings):
    old, _ = accept()  # its turn stays queued: the session is not expired
    settings.DIGITORN_SESSION_IDLE_SECONDS = 60
    Session.objects.update(last_active=timezone.now() - timedelta(seconds=120))
    again, _ = accept()
    assert again.session_pk == old.session_pk and again.position == 1
    assert Session.objects.get(pk=old.session_pk).last_active > timezone.now() - timedelta(seconds=60)


def test_the_admin_reaches_another_principals_session(app):
    alice, _ = accept(principal="alice")
    admin, _ = accept(principal="admin")
    assert admin.session_pk == alice.session_pk and admin.position == 1


def test_refused_messages_are_not_counted(app, settings):
    registry.app_rate_limit_set(app_id="acc", rpm=3)
    settings.DIGITORN_QUEUE_DEPTH = 1
    accept()
    with pytest.raises(QueueFullError):
        accept()
    with pytest.raises(ValidationError):
        accept(message="   ")
    assert RateLimitHit.objects.filter(app_id="acc").count() == 1
    assert Turn.objects.count() == 1
    accept(session_id="s2")
    accept(session_id="s3")
    with pytest.raises(RateLimitError) as info:
        accept(session_id="s4")
    assert info.value.headers["X-RateLimit-Remaining"] == "0" and "Retry-After" in info.value.headers
    assert RateLimitHit.objects.filter(app_id="acc").count() == 3
    assert not Session.objects.filter(session_id="s4").exists()  # a 429 creates nothing


def test_errors_keep_their_order(app):
    with pytest.raises(NotFoundError):
        message_accept(app_id="missing", session_id="s", principal="alice", message="hi")
    registry.app_rate_limit_set(app_id="acc", rpm=1)
    accept()
    with pytest.raises(RateLimitError):  # the rate limit comes before the message's own check
        accept(message="   ")
