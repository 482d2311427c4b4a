"""The embedded broker: kombu's SQLAlchemy transport over SQLite, with a doorbell.

kombu's SQLAlchemy transport has no way to wait for a message: the worker polls the table, and each
empty poll is an ORM query inside ``BEGIN IMMEDIATE`` (a write lock on the broker file). At the
0.1 s interval background tasks needed to start promptly, an idle daemon spent ~3 % of a core on
it (issue 14). Here every publish also writes one byte to a FIFO beside the broker file
(``celery-broker.sqlite3.wake``), and a consuming worker waits on that FIFO between empty polls, so
it polls when something was published, when one of its own tasks finished (a slot freed: a local
self-pipe), and otherwise every ``DIGITORN_BROKER_POLL_SECONDS`` (default 2 s) as a safety net
for a publisher that could not ring (e.g. a message queued while no worker held the FIFO open).

Every process that publishes (ASGI workers, a separate beat, ``manage.py``)
reaches this transport through the ``sqla`` alias that ``digitorn_site.celery`` points here, so
the broker URL stays ``sqla+sqlite:///…``. A URL that is not a SQLite file (``sqla+postgresql``)
gets no doorbell and the short 0.1 s interval kombu's users expect. Importing this module imports
SQLAlchemy; kombu resolves the alias only when a process first connects to the broker.
"""

from __future__ import annotations

import errno
import json
import os
import select
import sqlite3
import stat
import threading
from queue import Empty
from time import monotonic, sleep

from kombu.transport import sqlalchemy as _sqla
from kombu.utils.encoding import bytes_to_str

SQLITE_PREFIX = "sqlite:///"
# Without a doorbell (not a SQLite file, or the FIFO could not be set up) poll as before.
PLAIN_POLL_SECONDS = 0.1


def _env_seconds(name: str, default: float) -> float:
    try:
        return max(0.01, float(os.environ.get(name, "").strip() or default))
    except ValueError:
        return default


def wake_path(url: str) -> str | None:
    """The doorbell FIFO of the SQLite broker at ``url`` (kombu's hostname), or None."""
    if not url.startswith(SQLITE_PREFIX):
        return None
    path = url[len(SQLITE_PREFIX):].split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return path + ".wake"


def ring(path: str | None) -> None:
    """Wake the consuming workers of the broker whose doorbell is ``path``. Never raises: a missed
    ring costs at most one polling interval."""
    if path is None:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # no worker has it open (ENXIO) or none made it yet (ENOENT)
        return
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, b"\0")
    except OSError:  # EAGAIN: full of unread rings already, the worker will poll
        pass
    finally:
        os.close(fd)


def _open_doorbell(path: str) -> int | None:
    """The worker's end of the FIFO: read-write so it never sees end-of-file when publishers close
    theirs (a reader-only FIFO without writers is always "readable", a busy loop)."""
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    info = os.fstat(fd)
    if not stat.S_ISFIFO(info.st_mode) or info.st_uid != os.getuid():
        os.close(fd)  # something else sits at that path: poll instead of trusting it
        return None
    return fd


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
    except OSError as exc:  # pragma: no cover - a closed descriptor while stopping
        if exc.errno != errno.EBADF:
            raise


def sqlite_file(url: str) -> str | None:
    """The broker file of a ``sqlite:///`` URL (kombu's hostname), or None for anything else."""
    path = wake_path(url)
    return path[: -len(".wake")] if path is not None else None


class Channel(_sqla.Channel):
    def __init__(self, connection, **kwargs):
        self._raw: sqlite3.Connection | None = None
        self._raw_lock = threading.Lock()
        self._queue_ids: dict[str, int] = {}
        super().__init__(connection, **kwargs)

    def _put(self, queue, payload, **kwargs):
        super()._put(queue, payload, **kwargs)
        ring(self.connection.doorbell_path)

    def _get(self, queue):
        """A consumer's poll on the SQLite broker, in plain SQL. kombu's ORM version takes the
        write lock (``BEGIN IMMEDIATE``) and runs two ORM queries and a commit even when the queue
        is empty, which is every safety-net poll; here an empty queue costs one indexed read. A
        claimed message is deleted instead of being kept with ``visible = 0``: nothing ever reads a
        delivered row again (an unacknowledged message is restored by publishing it anew), and
        kept rows grew the broker file by ~1 KiB per task forever (issue 14, bounded growth)."""
        path = sqlite_file(str(self.connection.client.hostname or ""))
        if path is None:
            return super()._get(queue)
        queue_id = self._queue_ids.get(queue)
        if queue_id is None:
            queue_id = self._queue_ids[queue] = self._get_or_create(queue).id
            self.session.commit()  # end the ORM's read transaction: it would hold a snapshot
        table = self.message_tablename
        with self._raw_lock:
            conn = self._raw_connection(path)
            if conn.execute(
                f"SELECT 1 FROM {table} WHERE visible != 0 AND queue_id = ? LIMIT 1", (queue_id,)
            ).fetchone() is None:
                raise Empty()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    f"SELECT id, payload FROM {table} WHERE visible != 0 AND queue_id = ? "
                    "ORDER BY timestamp, id LIMIT 1",
                    (queue_id,),
                ).fetchone()
                if row is not None:
                    conn.execute(f"DELETE FROM {table} WHERE id = ?", (row[0],))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        if row is None:  # another consumer took it between the read and the lock
            raise Empty()
        return json.loads(bytes_to_str(row[1]))

    def _raw_connection(self, path: str) -> sqlite3.Connection:
        if self._raw is None:
            # Autocommit (isolation_level=None): the read above holds no transaction between polls.
            conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            # Rows delivered by earlier versions (kept with visible = 0) are dead weight: drop them once.
            conn.execute(f"DELETE FROM {self.message_tablename} WHERE visible = 0")
            self._raw = conn
        return self._raw

    def close(self):
        try:
            super().close()
        finally:
            if self._raw is not None:
                raw, self._raw = self._raw, None
                raw.close()

    # A finished task frees a prefetch slot: poll again at once instead of at the next interval.
    def basic_ack(self, delivery_tag, multiple=False):
        super().basic_ack(delivery_tag, multiple=multiple)
        self.connection.nudge()

    def basic_reject(self, delivery_tag, requeue=False):
        super().basic_reject(delivery_tag, requeue=requeue)
        self.connection.nudge()


class Transport(_sqla.Transport):
    Channel = Channel

    def __init__(self, client, **kwargs):
        super().__init__(client, **kwargs)
        self.doorbell_path = wake_path(str(client.hostname or ""))
        self._doorbell: int | None = None
        self._nudge_r: int | None = None
        self._nudge_w: int | None = None
        self._doorbell_tried = False
        self.polling_interval = PLAIN_POLL_SECONDS

    def _setup_doorbell(self) -> None:
        """On the first drain (only consumers drain): open the FIFO and a self-pipe."""
        self._doorbell_tried = True
        if self.doorbell_path is None:
            return
        fd = _open_doorbell(self.doorbell_path)
        if fd is None:
            return
        self._doorbell = fd
        self._nudge_r, self._nudge_w = os.pipe()
        for end in (self._nudge_r, self._nudge_w):
            os.set_blocking(end, False)
        self.polling_interval = _env_seconds("DIGITORN_BROKER_POLL_SECONDS", 2.0)

    def nudge(self) -> None:
        if self._nudge_w is not None:
            try:
                os.write(self._nudge_w, b"\0")
            except OSError:  # full (already nudged) or closed while stopping
                pass

    def _wait(self, seconds: float) -> None:
        if self._doorbell is None:
            sleep(seconds)
            return
        fds = [self._doorbell, self._nudge_r]
        try:
            ready, _, _ = select.select(fds, [], [], seconds)
        except (OSError, ValueError):  # closed under us while stopping
            return
        for fd in ready:
            _drain(fd)

    def drain_events(self, connection, timeout=None):
        # kombu's virtual Transport.drain_events with the sleep replaced by a wait on the doorbell.
        if not self._doorbell_tried:
            self._setup_doorbell()
        started = monotonic()
        get = self.cycle.get
        while True:
            try:
                get(self._deliver, timeout=timeout)
            except Empty:
                wait = self.polling_interval
                if timeout is not None:
                    left = timeout - (monotonic() - started)
                    if left <= 0:
                        raise TimeoutError() from None  # socket.timeout, what callers catch
                    wait = min(wait, left)
                self._wait(wait)
            else:
                return

    def close_connection(self, connection):
        super().close_connection(connection)
        for name in ("_doorbell", "_nudge_r", "_nudge_w"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._doorbell_tried = False
