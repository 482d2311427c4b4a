"""Each named statement of ``digitorn_site.fastsql`` against the ORM: what it reads equals what the
equivalent queryset returns (same rows, same Python types: aware datetimes, parsed JSON, bools,
None), and what it writes reads back through the ORM as the ORM's own write would.

Runs on the database of the test process: SQLite in the normal suite; on PostgreSQL in
``make test-scaleout`` (``DATABASE_URL`` set), where these tests carry the ``scaleout`` mark.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Count, Max, Min, Q
from django.utils import timezone

from apps_registry.models import App
from conversations.models import Event, Message, Notification, RateLimitHit, Session, Turn
from digitorn_site import fastsql

pytestmark = [pytest.mark.django_db(transaction=True)]
if not settings.IS_SQLITE:
    # The same cases on PostgreSQL belong to the scale-out leg.
    pytestmark.append(pytest.mark.scaleout)

ACTIVE = (Turn.Status.QUEUED, Turn.Status.RUNNING, Turn.Status.WAITING_APPROVAL)


def _row(obj: models.Model) -> list[tuple[str, object, type]]:
    """Every concrete field's value and its exact type: equal rows with different types still differ."""
    return [(f.attname, getattr(obj, f.attname), type(getattr(obj, f.attname))) for f in obj._meta.concrete_fields]


def _same_instances(got: list, want: list) -> None:
    assert [type(o) for o in got] == [type(o) for o in want]
    assert [_row(o) for o in got] == [_row(o) for o in want]
    for o in got:
        assert o._state.adding is False and o._state.db == connection.alias


def _typed(values) -> list[tuple[object, type]]:
    return [(v, type(v)) for v in values]


class World:
    """Rows of every kind the statements touch, with the awkward values: None, nested JSON,
    datetimes with microseconds, a delegated child session."""

    def __init__(self):
        now = timezone.now()
        self.now = now
        self.app = App.objects.create(
            app_id="parity", name="Parity", version="1", mode="conversation", raw_yaml="x", yaml_hash="h",
            compiled={"tools": [1, {"a": None}]}, deployed_at=now, rate_limit_rpm=None,
        )
        self.app2 = App.objects.create(
            app_id="parity2", name="P2", version="1", mode="conversation", raw_yaml="x", yaml_hash="h",
            compiled={}, deployed_at=now, rate_limit_rpm=17,
        )
        self.s1 = Session.objects.create(app_id="parity", session_id="s", principal="alice", last_seq=3)
        self.s1b = Session.objects.create(app_id="parity", session_id="s", principal="bob", last_seq=1)
        self.child = Session.objects.create(
            app_id="parity", session_id="child", principal="alice", parent=self.s1,
            delegation={"agent_id": "helper", "task_id": "t1", "correlation_id": "c-parent", "nested": [None, 1.5]},
        )
        self.lonely = Session.objects.create(app_id="parity", session_id="lonely", principal="alice")
        Session.objects.filter(pk=self.s1b.pk).update(last_active=now + timedelta(seconds=5))
        Session.objects.filter(pk=self.s1.pk).update(last_active=now - timedelta(microseconds=123457))
        mk = Turn.objects.create
        self.done = mk(session=self.s1, correlation_id="c0", status=Turn.Status.DONE, result={"content": "x"},
                       finished_at=now)
        self.running = mk(session=self.s1, correlation_id="c1", status=Turn.Status.RUNNING, lease_owner="w1",
                          lease_expires_at=now + timedelta(seconds=30, microseconds=7), state={"started": True},
                          cancel_requested=True, turns_used=2, tool_calls_count=1, started_at=now)
        self.queued = mk(session=self.s1, correlation_id="c2", status=Turn.Status.QUEUED, content="hi")
        self.queued2 = mk(session=self.s1, correlation_id="c3", status=Turn.Status.QUEUED, content="again")
        self.child_turn = mk(session=self.child, correlation_id="c4", status=Turn.Status.WAITING_APPROVAL,
                             parent_turn=self.running, depth=1, state={"pending": {"a": "r1"}})
        Notification.objects.create(session=self.s1, app_id="parity", task_id="t9", status="done",
                                    summary={"k": [1, 2]}, delivered_at=now)
        Notification.objects.create(session=self.s1, app_id="parity", task_id="t8", status="failed",
                                    summary={"error": None})
        Notification.objects.create(session=self.s1, app_id="parity", task_id="t7", status="done", summary={})
        for i, (role, calls) in enumerate([
            (Message.Role.USER, None), (Message.Role.ASSISTANT, [{"id": "k1", "name": "fs.read", "params": {}}]),
            (Message.Role.TOOL, None), (Message.Role.ASSISTANT, None),
        ]):
            Message.objects.create(session=self.s1, role=role, content=f"m{i}", tool_calls=calls,
                                   tool_call_id="k1" if role == Message.Role.TOOL else "", correlation_id="c1")
        Message.objects.create(session=self.lonely, role=Message.Role.USER, content="other")
        for seq in (2, 3, 4, 5):
            Event.objects.create(session=self.s1, seq=seq, type="t", data={"seq": seq, "n": None, "l": [1.5]},
                                 correlation_id="c1" if seq % 2 else "")
        self.t0 = time.time()
        for offset in (-90.0, -30.5, -1.25):
            RateLimitHit.objects.create(app_id="parity", at=self.t0 + offset)
        RateLimitHit.objects.create(app_id="parity2", at=self.t0)


def _reread(obj: models.Model) -> list:
    return _row(type(obj).objects.get(pk=obj.pk))


# --- one case per named statement ----------------------------------------------------------------


def case_ping(w: World) -> None:
    assert fastsql.ping() is None


def case_app_head(w: World) -> None:
    for app in (w.app, w.app2):
        want = App.objects.filter(pk=app.pk).values_list("updated_at", "rate_limit_rpm").get()
        assert _typed(fastsql.app_head(app.pk)) == _typed(want)
    assert fastsql.app_head("nope") is None


def case_ratelimit_lock(w: World) -> None:
    with transaction.atomic():
        fastsql.ratelimit_lock("parity")
        fastsql.ratelimit_lock("parity")  # re-entrant within the transaction


def case_ratelimit_window(w: World) -> None:
    for app_id, since in (("parity", w.t0 - 60), ("parity", w.t0 - 100), ("parity", w.t0), ("none", 0.0)):
        agg = RateLimitHit.objects.filter(app_id=app_id, at__gt=since).aggregate(n=Count("id"), oldest=Min("at"))
        assert _typed(fastsql.ratelimit_window(app_id, since)) == _typed((agg["n"], agg["oldest"]))


def case_ratelimit_insert(w: World) -> None:
    at = w.t0 + 0.123456
    before = set(RateLimitHit.objects.values_list("pk", flat=True))
    fastsql.ratelimit_insert("parity", at)
    (new,) = RateLimitHit.objects.exclude(pk__in=before)
    twin = RateLimitHit.objects.create(app_id="parity", at=at)
    assert _reread(new)[1:] == _reread(twin)[1:]


def case_session_get(w: World) -> None:
    for lock in (False, True):
        with transaction.atomic():
            _same_instances([fastsql.session_get(w.child.pk, lock=lock)], [Session.objects.get(pk=w.child.pk)])
            assert fastsql.session_get(10**9, lock=lock) is None


def case_session_find(w: World) -> None:
    got = fastsql.session_find("parity", "alice", "s")
    _same_instances([got], [Session.objects.get(app_id="parity", principal="alice", session_id="s")])
    assert fastsql.session_find("parity", "carol", "s") is None


def case_session_find_latest(w: World) -> None:
    got = fastsql.session_find_latest("parity", "s")
    _same_instances([got], [Session.objects.filter(app_id="parity", session_id="s").order_by("-last_active").first()])
    assert got.principal == "bob"
    assert fastsql.session_find_latest("parity", "missing") is None


def case_session_exists(w: World) -> None:
    assert fastsql.session_exists(w.s1.pk) is Session.objects.filter(pk=w.s1.pk).exists() is True
    assert fastsql.session_exists(10**9) is Session.objects.filter(pk=10**9).exists() is False


def case_session_touch(w: World) -> None:
    now = timezone.now() + timedelta(microseconds=1)
    with transaction.atomic():
        got = fastsql.session_touch(w.s1.pk, now)
    Session.objects.filter(pk=w.s1b.pk).update(last_active=now)
    assert _typed([got]) == _typed([Session.objects.get(pk=w.s1.pk).last_seq])
    assert Session.objects.get(pk=w.s1.pk).last_active == Session.objects.get(pk=w.s1b.pk).last_active == now
    assert fastsql.session_touch(10**9, now) is None


def case_session_touch_named(w: World) -> None:
    now = timezone.now() + timedelta(microseconds=1)
    s1_active = Session.objects.get(pk=w.s1.pk).last_active
    # Idle since before ``active_since``: not touched, nothing changed.
    assert fastsql.session_touch_named("parity", "alice", "s", now, s1_active + timedelta(microseconds=1)) is None
    assert Session.objects.get(pk=w.s1.pk).last_active == s1_active
    with transaction.atomic():
        got = fastsql.session_touch_named("parity", "alice", "s", now, s1_active)
    row = Session.objects.get(pk=w.s1.pk)
    assert _typed(got) == _typed([row.pk, row.last_seq]) and row.last_active == now
    assert Session.objects.get(pk=w.s1b.pk).last_active != now  # bob's session of the same id: untouched
    assert fastsql.session_touch_named("parity", "carol", "s", now, s1_active) is None
    assert fastsql.session_touch_named("parity", "alice", "missing", now, s1_active) is None


def case_session_mark(w: World) -> None:
    now = timezone.now()
    assert fastsql.session_mark(w.s1.pk, status=Session.Status.RUNNING, last_active=now) == 1
    Session.objects.filter(pk=w.s1b.pk).update(status=Session.Status.RUNNING, last_active=now)
    a, b = Session.objects.get(pk=w.s1.pk), Session.objects.get(pk=w.s1b.pk)
    assert _typed([a.status, a.last_active]) == _typed([b.status, b.last_active])
    assert a.last_active == now
    assert fastsql.session_mark(10**9, status=Session.Status.IDLE, last_active=now) == 0


def case_session_settle(w: World) -> None:
    now = timezone.now()
    kwargs = {"now": now, "active": ACTIVE, "busy": Session.Status.RUNNING, "idle": Session.Status.IDLE}

    def orm(session: Session, turn_pk: int) -> str:
        busy = Turn.objects.filter(session=session, status__in=ACTIVE).exclude(pk=turn_pk).exists()
        return Session.Status.RUNNING if busy else Session.Status.IDLE

    for session, turn_pk in ((w.s1, w.running.pk), (w.child, w.child_turn.pk), (w.lonely, 0)):
        want = orm(session, turn_pk)
        assert fastsql.session_settle(session.pk, turn_pk=turn_pk, **kwargs) == want
        stored = Session.objects.get(pk=session.pk)
        assert (stored.status, stored.last_active) == (want, now)
    assert fastsql.session_settle(w.s1.pk, turn_pk=w.running.pk, **kwargs) == Session.Status.RUNNING
    assert fastsql.session_settle(10**9, turn_pk=0, **kwargs) is None


def case_session_next_seq(w: World) -> None:
    with transaction.atomic():
        assert fastsql.session_next_seq(w.s1.pk) == 4
    assert Session.objects.get(pk=w.s1.pk).last_seq == 4
    assert fastsql.session_next_seq(10**9) is None


def case_stream_next_seq(w: World) -> None:
    with transaction.atomic():
        assert fastsql.stream_next_seq(w.s1.pk) == (w.s1.pk, 4)
        assert fastsql.stream_next_seq(w.child.pk) == (w.s1.pk, 5)  # a delegated run's events: the parent's stream
    stored = Session.objects.filter(pk__in=[w.s1.pk, w.child.pk]).order_by("pk").values_list("pk", "last_seq")
    assert list(stored) == [(w.s1.pk, 5), (w.child.pk, 0)]
    assert fastsql.stream_next_seq(10**9) is None


def case_stream_reserve_seqs(w: World) -> None:
    with transaction.atomic():
        assert fastsql.stream_reserve_seqs(w.s1.pk, 3) == (w.s1.pk, 6)
        assert fastsql.stream_reserve_seqs(w.child.pk, 2) == (w.s1.pk, 8)  # the parent's stream
    stored = Session.objects.filter(pk__in=[w.s1.pk, w.child.pk]).order_by("pk").values_list("pk", "last_seq")
    assert list(stored) == [(w.s1.pk, 8), (w.child.pk, 0)]
    assert fastsql.stream_reserve_seqs(10**9, 1) is None


def case_session_delegation(w: World) -> None:
    for session in (w.child, w.s1):
        want = Session.objects.filter(pk=session.pk).values_list("delegation", flat=True).get()
        assert _typed([fastsql.session_delegation(session.pk)]) == _typed([want])
    assert fastsql.session_delegation(w.child.pk)["nested"] == [None, 1.5]
    assert fastsql.session_delegation(10**9) is None


def case_sessions_max_pk(w: World) -> None:
    assert _typed([fastsql.sessions_max_pk()]) == _typed([Session.objects.aggregate(m=Max("id"))["m"]])
    Session.objects.all().delete()
    assert fastsql.sessions_max_pk() is None


def case_sessions_named(w: World) -> None:
    names = ["s", "child", "nope", *[f"x{i}" for i in range(fastsql.IN_CHUNK + 3)]]
    want = Session.objects.filter(app_id="parity", principal="alice", session_id__in=names).values_list("pk", "session_id")
    assert sorted(fastsql.sessions_named("parity", "alice", names)) == sorted(want)
    assert fastsql.sessions_named("parity", "alice", []) == []


def case_sessions_last_seq(w: World) -> None:
    pks = [w.s1.pk, w.child.pk, 10**9, *range(10**9 + 1, 10**9 + fastsql.IN_CHUNK + 5), w.lonely.pk]
    want = Session.objects.filter(pk__in=pks).values_list("pk", "last_seq")
    got = fastsql.sessions_last_seq(pks)
    assert sorted(got) == sorted(want) and len(got) == 3
    assert all(type(seq) is int for _, seq in got)


def case_turn_get(w: World) -> None:
    for lock in (False, True):
        with transaction.atomic():
            for turn in (w.running, w.child_turn, w.done):
                _same_instances([fastsql.turn_get(turn.pk, lock=lock)], [Turn.objects.get(pk=turn.pk)])
            assert fastsql.turn_get(10**9, lock=lock) is None


def case_turn_head(w: World) -> None:
    for lock in (False, True):
        with transaction.atomic():
            for session, statuses in ((w.s1, ACTIVE), (w.s1, (Turn.Status.QUEUED,)), (w.child, ACTIVE)):
                want = Turn.objects.filter(session=session, status__in=statuses).order_by("id").first()
                _same_instances([fastsql.turn_head(session.pk, statuses, lock=lock)], [want])
            assert fastsql.turn_head(w.lonely.pk, ACTIVE, lock=lock) is None


def case_turn_queue_counts(w: World) -> None:
    for session in (w.s1, w.child, w.lonely):
        want = Turn.objects.filter(session=session).aggregate(
            waiting=Count("id", filter=Q(status=Turn.Status.QUEUED)), ahead=Count("id", filter=Q(status__in=ACTIVE))
        )
        got = fastsql.turn_queue_counts(session.pk, queued=Turn.Status.QUEUED, active=ACTIVE)
        assert _typed(got) == _typed((want["waiting"], want["ahead"]))


def case_turn_session_pk(w: World) -> None:
    for turn in (w.running, w.child_turn):
        want = Turn.objects.filter(pk=turn.pk).values_list("session_id", flat=True).get()
        assert _typed([fastsql.turn_session_pk(turn.pk)]) == _typed([want])
    assert fastsql.turn_session_pk(10**9) is None


def case_turn_link(w: World) -> None:
    want = Turn.objects.filter(pk=w.child_turn.pk).values_list("correlation_id", "session_id").get()
    assert _typed(fastsql.turn_link(w.child_turn.pk)) == _typed(want)
    assert fastsql.turn_link(10**9) is None


def case_turn_lease(w: World) -> None:
    for turn in (w.running, w.queued):
        want = Turn.objects.filter(pk=turn.pk).values_list("status", "lease_owner", "cancel_requested").get()
        assert _typed(fastsql.turn_lease(turn.pk)) == _typed(want)
    assert fastsql.turn_lease(w.running.pk)[2] is True
    assert fastsql.turn_lease(10**9) is None


def case_turn_lease_renew(w: World) -> None:
    until = timezone.now() + timedelta(seconds=42, microseconds=999)
    assert fastsql.turn_lease_renew(w.running.pk, until) == 1
    Turn.objects.filter(pk=w.queued.pk).update(lease_expires_at=until)
    got, want = Turn.objects.get(pk=w.running.pk).lease_expires_at, Turn.objects.get(pk=w.queued.pk).lease_expires_at
    assert _typed([got]) == _typed([want]) and got == until
    assert fastsql.turn_lease_renew(10**9, until) == 0


def case_turn_count_reply(w: World) -> None:
    until = timezone.now() + timedelta(seconds=60)
    with transaction.atomic():
        got = fastsql.turn_count_reply(w.running.pk, tool_calls=3, lease_until=until)
    want = Turn.objects.filter(pk=w.running.pk).values_list("correlation_id", "session_id").get()
    assert _typed(got) == _typed(want)
    stored = Turn.objects.get(pk=w.running.pk)
    assert (stored.turns_used, stored.tool_calls_count, stored.lease_expires_at) == (3, 4, until)
    assert fastsql.turn_count_reply(10**9, tool_calls=0, lease_until=until) is None


def case_notifications_undelivered(w: World) -> None:
    want = list(Notification.objects.filter(session=w.s1, delivered_at__isnull=True).order_by("id"))
    got = fastsql.notifications_undelivered(w.s1.pk)
    assert len(got) == 2
    _same_instances(got, want)
    assert fastsql.notifications_undelivered(w.lonely.pk) == []


def case_messages_tail(w: World) -> None:
    names = ("id", "role", "content", "tool_calls", "tool_call_id", "name", "correlation_id", "created_at")
    for limit in (1, 3, 100):
        want = [list(v) for v in Message.objects.filter(session=w.s1).order_by("-id").values_list(*names)[:limit]]
        got = fastsql.messages_tail(w.s1.pk, names, limit)
        assert [_typed(r) for r in got] == [_typed(r) for r in want]
    assert fastsql.messages_tail(w.s1.pk, names, 100)[2][3] == [{"id": "k1", "name": "fs.read", "params": {}}]


def case_events_after(w: World) -> None:
    for after, limit in ((0, 500), (2, 2), (3, 1), (5, 10)):
        want = list(Event.objects.filter(session=w.s1, seq__gt=after).order_by("seq")[:limit])
        _same_instances(fastsql.events_after(w.s1.pk, after, limit), want)
    assert fastsql.events_after(w.lonely.pk, 0, 10) == []


def case_events_min_seq(w: World) -> None:
    want = Event.objects.filter(session=w.s1).aggregate(m=Min("seq"))["m"]
    assert _typed([fastsql.events_min_seq(w.s1.pk)]) == _typed([want])
    assert fastsql.events_min_seq(w.lonely.pk) is None


def case_insert(w: World) -> None:
    now = timezone.now()
    factories = [
        lambda tag: Event(session_id=w.s1.pk, seq=9 + tag, type="x", data={"a": [None, {"b": 1.5}], "s": "é"},
                          correlation_id="c"),
        lambda tag: Message(session=w.s1, role=Message.Role.ASSISTANT, content="", tool_calls=None),
        lambda tag: Turn(session=w.s1, correlation_id=f"c9-{tag}", kind=Turn.Kind.NOTIFICATION,
                         status=Turn.Status.QUEUED, lease_expires_at=now, state={}),
        lambda tag: Notification(session=w.s1, app_id="parity", task_id="tx", status="done", summary={"k": None}),
    ]
    differ = {"id", "seq", "correlation_id", "created_at"}  # the pk, unique columns, the clock

    def same(a: list, b: list) -> None:
        assert [x if x[0] not in differ else (x[0], x[2]) for x in a] == [
            x if x[0] not in differ else (x[0], x[2]) for x in b
        ]

    for make in factories:
        obj, twin = make(0), make(1)
        assert fastsql.insert(obj) is obj and obj.pk is not None
        twin.save()
        assert (obj._state.adding, obj._state.db) == (twin._state.adding, twin._state.db)
        same(_row(obj), _row(twin))  # the instance as save() leaves it (auto_now_add included)
        same(_reread(obj), _reread(twin))  # the row as the ORM reads it back
        assert type(obj).objects.get(pk=obj.pk).created_at == obj.created_at


def case_insert_many(w: World) -> None:
    def events(base: int, tag: str) -> list[Event]:
        return [Event(session_id=w.s1.pk, seq=base + i, type="x", data={"a": [None, {"b": 1.5}], "i": i},
                      correlation_id=tag) for i in range(3)]

    fastsql.insert_many(events(20, "many"))
    Event.objects.bulk_create(events(30, "orm"))
    fastsql.insert_many([])  # nothing to write: no statement

    def read(tag: str) -> list:
        return [[x for x in _row(e) if x[0] not in {"id", "seq", "correlation_id", "created_at"}]
                for e in Event.objects.filter(correlation_id=tag).order_by("seq")]

    assert read("many") == read("orm") and len(read("many")) == 3
    assert list(Event.objects.filter(correlation_id="many").values_list("seq", flat=True).order_by("seq")) == [20, 21, 22]


def case_turn_rank(w: World) -> None:
    for turn in (w.done, w.running, w.queued):
        want = Turn.objects.filter(session_id=turn.session_id, pk__lte=turn.pk).count()
        assert _typed([fastsql.turn_rank(turn.session_id, turn.pk)]) == _typed([want])


def case_update(w: World) -> None:
    now = timezone.now()
    turn = Turn.objects.get(pk=w.queued.pk)
    twin = Turn.objects.get(pk=w.queued2.pk)
    for t in (turn, twin):
        t.state = {"started": True, "sealed": {"k": None}}
        t.status = Turn.Status.RUNNING
        t.lease_expires_at = now
        t.started_at = now
        t.result = None
        t.attempts += 1
    names = ["state", "status", "lease_expires_at", "started_at", "result", "attempts"]
    fastsql.update(turn, names)
    twin.save(update_fields=names)
    a, b = _reread(turn), _reread(twin)
    pick = {f"{n}_id" if n == "session" else n for n in names}
    assert [x for x in a if x[0] in pick] == [x for x in b if x[0] in pick]


CASES: dict[str, Callable[[World], None]] = {
    name.removeprefix("case_"): fn for name, fn in list(globals().items()) if name.startswith("case_")
}


def _public_functions() -> set[str]:
    return {
        name for name, obj in vars(fastsql).items()
        if not name.startswith("_") and inspect.isfunction(obj) and obj.__module__ == fastsql.__name__
    }


def test_every_statement_has_a_parity_case():
    assert _public_functions() == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_parity_with_the_orm(name: str):
    CASES[name](World())


def test_statements_are_built_once_per_shape():
    """No per-call SQL compilation: the second call of a statement reuses the first one's object."""
    w = World()
    fastsql.events_after(w.s1.pk, 0, 10)
    first = fastsql._events_after()
    fastsql.events_after(w.s1.pk, 0, 10)
    assert fastsql._events_after() is first
    assert fastsql._turn_head(3, True) is fastsql._turn_head(3, True)
    assert fastsql._update_statement(Turn, ("status",), connection.vendor) is fastsql._update_statement(
        Turn, ("status",), connection.vendor
    )
