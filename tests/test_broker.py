"""The embedded broker's doorbell (digitorn_site.broker): a waiting consumer is woken by a publish
and by a freed prefetch slot, not by its (here hour-long) polling interval.

Real kombu connections on a real SQLite broker file. The consumer waits with a 60 s timeout, far
below the polling interval, so without the doorbell it can only get its message at the poll that
follows the whole timeout: each test checks that the wait ended before the timeout did (not a
speed assertion: a wait that was not woken cannot end earlier).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from queue import Empty

import pytest
from kombu import Connection

from digitorn_site import broker

WAIT = 60.0


@pytest.fixture
def broker_url(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITORN_BROKER_POLL_SECONDS", "3600")
    return f"sqlite:///{tmp_path / 'broker.sqlite3'}"


def connect(url: str) -> Connection:
    return Connection(url, transport=broker.Transport)


def publish_later(url: str, body: dict, delay: float = 0.3) -> threading.Thread:
    def send() -> None:
        time.sleep(delay)
        with connect(url) as conn:
            conn.SimpleQueue("jobs").put(body)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_wake_path_only_for_a_sqlite_file():
    assert broker.wake_path("sqlite:////data/celery-broker.sqlite3") == "/data/celery-broker.sqlite3.wake"
    assert broker.wake_path("sqlite:///:memory:") is None
    assert broker.wake_path("postgresql://db/broker") is None


def test_a_publish_wakes_a_waiting_consumer(broker_url):
    with connect(broker_url) as conn:
        queue = conn.SimpleQueue("jobs")
        with pytest.raises(Empty):
            queue.get(block=False)  # declares the queue; nothing there yet
        sender = publish_later(broker_url, {"n": 1})
        began = time.monotonic()
        message = queue.get(block=True, timeout=WAIT)
        assert time.monotonic() - began < WAIT
        sender.join()
        assert message.payload == {"n": 1}
        message.ack()
        path = broker.wake_path(broker_url)
        assert stat.S_ISFIFO(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert conn.transport.polling_interval == 3600


def test_an_ack_lets_a_full_consumer_take_the_next_message(broker_url):
    with connect(broker_url) as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_size=0, prefetch_count=1, apply_global=False)
        received: list = []
        queue = conn.SimpleQueue("jobs", channel=channel)
        queue.consumer.register_callback(lambda body, message: received.append(message))
        queue.consumer.consume()
        for n in (1, 2):
            queue.put({"n": n})
        conn.drain_events(timeout=WAIT)
        assert [m.payload for m in received] == [{"n": 1}]
        # The slot is taken: the next drain finds nothing it may take, the publish's ring is spent,
        # and only the ack (from another thread, as the worker's pool does) can wake it in time.
        acker = threading.Timer(0.3, received[0].ack)
        acker.start()
        began = time.monotonic()
        conn.drain_events(timeout=WAIT)
        assert time.monotonic() - began < WAIT
        acker.join()
        assert [m.payload for m in received] == [{"n": 1}, {"n": 2}]


def test_no_doorbell_when_something_else_sits_at_its_path(broker_url, tmp_path):
    path = broker.wake_path(broker_url)
    with open(path, "w") as fh:
        fh.write("not a fifo")
    with connect(broker_url) as conn:
        queue = conn.SimpleQueue("jobs")
        sender = publish_later(broker_url, {"n": 1})
        began = time.monotonic()
        message = queue.get(block=True, timeout=WAIT)  # found by plain short polling
        assert time.monotonic() - began < WAIT
        sender.join()
        assert message.payload == {"n": 1}
        assert conn.transport.polling_interval == broker.PLAIN_POLL_SECONDS
    with open(path) as fh:
        assert fh.read() == "not a fifo"


def _rows(url: str) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(broker.sqlite_file(url)) as db:
        return db.execute("SELECT visible FROM kombu_message").fetchall()


def test_a_delivered_message_leaves_no_row_behind(broker_url):
    """kombu's transport kept each delivered message (visible = 0) forever: ~1 KiB per task."""
    with connect(broker_url) as conn:
        queue = conn.SimpleQueue("jobs")
        for n in range(3):
            queue.put({"n": n})
        assert len(_rows(broker_url)) == 3
        got = []
        for _ in range(3):
            message = queue.get(block=True, timeout=WAIT)
            got.append(message.payload["n"])
            message.ack()
        assert got == [0, 1, 2]  # in publishing order
        assert _rows(broker_url) == []
        with pytest.raises(Empty):
            queue.get(block=False)


def test_rows_an_older_version_kept_are_dropped_once(broker_url):
    import sqlite3

    with connect(broker_url) as conn:
        queue = conn.SimpleQueue("jobs")
        queue.put({"n": 1})
        queue.put({"n": 2})
    with sqlite3.connect(broker.sqlite_file(broker_url)) as db:  # as kombu's own _get left them
        db.execute("UPDATE kombu_message SET visible = 0 WHERE id = (SELECT min(id) FROM kombu_message)")
    with connect(broker_url) as conn:
        message = conn.SimpleQueue("jobs").get(block=True, timeout=WAIT)
        assert message.payload == {"n": 2}
        message.ack()
    assert _rows(broker_url) == []


def test_an_unacknowledged_message_is_delivered_again_after_the_consumer_closes(broker_url):
    """Deleting the row at delivery keeps kombu's redelivery: an unacked message is restored by
    publishing it again when its channel closes (what a worker's warm shutdown does)."""
    with connect(broker_url) as conn:
        queue = conn.SimpleQueue("jobs")
        queue.put({"n": 1})
        message = queue.get(block=True, timeout=WAIT)
        assert message.payload == {"n": 1}
        assert _rows(broker_url) == []
    with connect(broker_url) as conn:
        again = conn.SimpleQueue("jobs").get(block=True, timeout=WAIT)
        assert again.payload == {"n": 1}
        again.ack()
