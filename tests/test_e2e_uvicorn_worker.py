"""The uvicorn worker's own guarantees on a real socket, with a stand-in ASGI app (no daemon):
the application close timeout (daphne's ``--application-close-timeout``) cancels a request still
running after its client left, and SIGTERM ends an open stream with a complete response."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PROJECT_ROOT, poll

pytestmark = pytest.mark.e2e


async def stubborn_app(scope, receive, send):
    """Streams one frame, then waits for its client's disconnect: under /polite it returns then (as
    Django's handler does), under /stubborn it ignores it. Records how it ended."""
    marker = Path(os.environ["STUBBORN_MARKER"])
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": b"event: hello\ndata: {}\n\n", "more_body": True})
    try:
        message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()
        marker.write_text("disconnected")
        if scope["path"] == "/polite":
            return
        await asyncio.sleep(3600)  # a request that would not stop by itself
    except asyncio.CancelledError:
        marker.write_text("cancelled")
        raise


@pytest.fixture
def worker(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.set_inheritable(True)
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-m", "digitorn_site.cli.uvicorn_worker", "--fd", str(sock.fileno()),
         "--application-close-timeout", "0.5", "--graceful-timeout", "1", "-v", "1",
         "tests.test_e2e_uvicorn_worker:stubborn_app"],
        pass_fds=(sock.fileno(),), cwd=str(PROJECT_ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "STUBBORN_MARKER": str(marker), "PYTHONPATH": str(PROJECT_ROOT)},
    )
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    try:
        yield proc, url, marker
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_a_request_that_ignores_its_disconnect_is_cancelled(worker):
    proc, url, marker = worker
    with httpx.stream("GET", f"{url}/stubborn", timeout=30) as response:
        assert response.status_code == 200
        assert next(response.iter_lines()) == "event: hello"
    poll(lambda: marker.exists() and marker.read_text() == "cancelled", timeout=15,
         what="the close timeout to cancel the request")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


def test_sigterm_ends_an_open_stream_with_a_complete_response(worker):
    proc, url, marker = worker
    with httpx.stream("GET", f"{url}/polite", timeout=30) as response:
        lines = response.iter_lines()
        assert next(lines) == "event: hello"
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest = list(lines)  # ends without a protocol error: the last chunk was sent
    assert rest == ["data: {}", ""] or rest == ["data: {}"], rest
    assert proc.wait(15) == 0
    assert time.monotonic() - began < 10
    assert marker.read_text() == "disconnected"  # the app was told its client left, and returned
    output = proc.stdout.read().decode(errors="replace")
    assert "Exception in ASGI application" not in output and "Cancel " not in output, output
