"""The API handler's request threads (digitorn_site.asgi): a request's thread-sensitive work runs on a
kept thread that later requests reuse, instead of a thread started (and joined by another) for
each request. Driven in-process through the real ASGI application.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.core.signals import request_finished, request_started

from digitorn_site import asgi

pytestmark = pytest.mark.django_db(transaction=True)


async def get(path: str, *, method: str = "GET", body: bytes = b"", headers: tuple = ()) -> list[dict]:
    sent: list[dict] = []
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if pending:
            return pending.pop()
        await asyncio.Event().wait()  # no disconnect: the handler cancels this when done
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }
    await asgi.application(scope, receive, send)
    return sent


@pytest.fixture
def threads_seen():
    seen: list[tuple[str, threading.Thread]] = []

    def started(**kwargs) -> None:
        seen.append(("started", threading.current_thread()))

    def finished(**kwargs) -> None:
        seen.append(("finished", threading.current_thread()))

    request_started.connect(started)
    request_finished.connect(finished)
    try:
        yield seen
    finally:
        request_started.disconnect(started)
        request_finished.disconnect(finished)


def test_requests_reuse_a_kept_thread(threads_seen):
    for _ in range(3):
        sent = asyncio.run(get("/api/health"))
        assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    threads = {thread for _, thread in threads_seen}
    assert len(threads_seen) == 6  # started + finished per request
    assert len(threads) == 1, threads  # Django's default starts a thread per request
    (thread,) = threads
    assert thread.is_alive() and thread is not threading.main_thread()
    assert thread.name.startswith("request")


def test_kept_threads_are_bounded():
    pool = asgi._RequestThreads(keep=2)
    borrowed = [pool.acquire() for _ in range(4)]
    for executor in borrowed:
        executor.submit(lambda: None).result()
        pool.release(executor)
    assert pool.idle == borrowed[:2]
    assert all(executor._shutdown for executor in borrowed[2:])


def test_lean_views_borrow_no_thread(threads_seen, admin_key):
    """A view marked lean_request (the message-taking POSTs) gets no request thread: Django's request
    signals are sent from the event loop's thread, and no kept thread is lent. The loop runs in a
    thread of its own, as under the server (whose loop thread holds no database connection)."""
    idle_before = list(asgi._request_threads.idle)
    out: dict = {}

    def serve() -> None:
        out["sent"] = asyncio.run(get(
            "/api/apps/not-deployed/chat", method="POST", body=b'{"message": "hi", "session_id": "s"}',
            headers=((b"authorization", f"Bearer {admin_key}".encode()), (b"content-type", b"application/json")),
        ))

    loop_thread = threading.Thread(target=serve, name="loop")
    loop_thread.start()
    loop_thread.join()
    start, body = out["sent"][0], out["sent"][1]
    assert start["status"] == 404 and b'"error_code":"RESOURCE_NOT_FOUND"' in body["body"].replace(b" ", b"")
    assert [kind for kind, _ in threads_seen] == ["started", "finished"]
    assert {thread for _, thread in threads_seen} == {loop_thread}
    assert asgi._request_threads.idle == idle_before  # nothing borrowed, nothing given back


def test_api_paths_are_resolved_once_per_path(settings):
    """Django tries the urlconf's patterns in order for every request; the API handler remembers the
    match of the paths it saw lately (per urlconf), and a path that matches nothing stays a 404."""
    asgi._resolve.cache_clear()
    for _ in range(3):
        sent = asyncio.run(get("/api/health"))
        assert sent[0]["status"] == 200 and b'"success":true' in sent[1]["body"].replace(b" ", b"")
    info = asgi._resolve.cache_info()
    assert (info.misses, info.hits) == (1, 2)
    for _ in range(2):
        sent = asyncio.run(get("/api/no-such-route"))
        assert sent[0]["status"] == 404 and b'"success":false' in sent[1]["body"].replace(b" ", b"")
    assert asgi._resolve.cache_info().currsize == 1  # a miss raises: nothing remembered
    # Another urlconf is another resolver: its own answers, not the remembered ones.
    settings.ROOT_URLCONF = "conversations.ui_urls"
    assert asyncio.run(get("/api/health"))[0]["status"] == 404
    assert asgi._resolve.cache_info().currsize == 1
