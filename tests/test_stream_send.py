"""The API handler's streaming send (digitorn_site.asgi) and the ASGI worker's access lines
(digitorn_site.cli.asgi_worker): leaner than Django's and Twisted's own, and the same on the wire."""

from __future__ import annotations

import asyncio
import io

import pytest
from asgiref.sync import ThreadSensitiveContext, async_to_sync
from django.core.handlers.asgi import ASGIHandler
from django.http import StreamingHttpResponse

from digitorn_site import asgi


def _frames(closed: list[str]):
    async def frames():
        try:
            yield "event: connected\ndata: {\"é\": 1}\n\n"
            yield b": ping\n\n"
            yield ""
            yield "x" * (ASGIHandler.chunk_size * 2 + 5)  # cut into three body messages, as Django cuts it
            yield memoryview(b"data: end\n\n")
        finally:
            closed.append("closed")

    return frames()


def _response(stream) -> StreamingHttpResponse:
    response = StreamingHttpResponse(stream, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    response["X-RateLimit-Remaining"] = "59"
    response.set_cookie("c", "v")
    return response


async def _sent(handler_send, response) -> list[dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await handler_send(response, send)
    return sent


def test_stream_sends_what_django_sends():
    ours, django = [], []
    ours_sent = async_to_sync(_sent)(asgi.api_asgi_app._send_stream, _response(_frames(ours)))
    django_sent = async_to_sync(_sent)(
        lambda r, s: ASGIHandler.send_response(asgi.api_asgi_app, r, s), _response(_frames(django))
    )
    assert ours_sent == django_sent
    assert [m.get("body") for m in ours_sent[1:]][:3] == [
        'event: connected\ndata: {"é": 1}\n\n'.encode(), b": ping\n\n", b""
    ]
    assert len(ours_sent) == 1 + 7 + 1 and ours_sent[-1] == {"type": "http.response.body"}
    assert ours == ["closed"]


def test_the_stream_views_response_takes_the_lean_send_and_others_do_not():
    assert asgi._streams_directly(_response(_frames([])))
    assert not asgi._streams_directly(StreamingHttpResponse(iter([b"a"])))  # a sync iterator: Django's way


def test_a_failed_send_closes_the_stream_at_once():
    closed: list[str] = []

    async def run() -> None:
        count = 0

        async def send(message: dict) -> None:
            nonlocal count
            count += 1
            if count == 3:  # the client is gone on the second frame
                raise OSError("connection lost")

        with pytest.raises(OSError):
            await asgi.api_asgi_app._send_stream(_response(_frames(closed)), send)

    async_to_sync(run)()
    assert closed == ["closed"]  # the generator's finally ran (a stream's guard is dropped)


def test_a_cancelled_stream_is_closed():
    closed: list[str] = []

    async def run() -> None:
        async def frames():
            try:
                yield "a"
                await asyncio.Event().wait()
                yield "b"
            finally:
                closed.append("closed")

        async def send(message: dict) -> None:
            pass

        task = asyncio.ensure_future(asgi.api_asgi_app._send_stream(_response(frames()), send))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async_to_sync(run)()
    assert closed == ["closed"]


class _Server:
    def __init__(self, verbosity: int):
        self.verbosity = verbosity


@pytest.mark.parametrize("verbosity, written", [(1, False), (2, True)])
def test_twisted_access_line_only_where_it_goes_somewhere(verbosity, written):
    """Daphne discards Twisted's log at verbosity <= 1: its combined-log line is not even built then;
    above, it is written as before (and Python logging's RedactFilter sees it)."""
    from daphne.http_protocol import HTTPFactory

    from digitorn_site.cli import asgi_worker

    formatted: list[object] = []

    def formatter(timestamp, request) -> str:
        formatted.append(request)
        return "line"

    factory = HTTPFactory(_Server(verbosity))
    factory._logFormatter = formatter
    factory._logDateTime = "now"
    factory._logFile = io.StringIO()
    asgi_worker._twisted_access_line(factory, "request")
    assert (formatted == ["request"]) is written
    assert factory._logFile.getvalue() == ("line\n" if written else "")


# --- the turn-taking endpoints' bodies share one set of fields (digitorn_site.api.asyncviews) ---


def _outcome(serializer_class, data):
    from digitorn_site.api.base import parse
    from digitorn_site.errors import DigitornError

    try:
        return "ok", parse(serializer_class, data)
    except DigitornError as exc:
        return type(exc).__name__, str(exc), exc.details


def test_shared_fields_validate_as_the_serializer_does():
    from conversations.api import serializers as s
    from digitorn_site.api.asyncviews import _shared_fields

    image = {"data": "aGVsbG8=", "mime": "image/png", "name": "a.png"}
    bodies = [
        {"session_id": "s1", "message": "hi"},
        {"session_id": "s1", "message": "hi", "images": [image], "queue_mode": "wait", "client_message_id": "c"},
        {"message": "no session"},
        {"session_id": "s1", "message": 3},
        {"session_id": "s1", "message": "hi", "queue_mode": "later"},
        {"session_id": "s1", "message": "hi", "images": [{"data": "!!", "mime": "image/png"}, "x"]},
        {"session_id": "s1", "message": "hi", "images": [{"data": "aGVsbG8=", "mime": "audio/wav"}]},
        {"session_id": "s1", "message": "hi", "images": [image] * 11},
        [1, 2],
        {"session_id": "s1", "message": "again"},  # after the failures: nothing of them left behind
    ]
    for serializer_class in (s.ChatSerializer, s.MessageSerializer, s.RunSerializer):
        shared = _shared_fields(serializer_class)
        for body in bodies + [{"input": "x", "input_type": "json"}, {"input": "x", "input_type": "?"}]:
            assert _outcome(shared, body) == _outcome(serializer_class, body), (serializer_class, body)
    ok = _outcome(_shared_fields(s.ChatSerializer), bodies[1])
    assert ok[0] == "ok" and ok[1]["images"] == [image] and ok[1]["queue_mode"] == "wait"
    default = _outcome(_shared_fields(s.ChatSerializer), bodies[0])[1]
    assert default["images"] == [] and default["images"] is not _outcome(_shared_fields(s.ChatSerializer), bodies[0])[1]["images"]


def test_shared_fields_are_built_once():
    from conversations.api import serializers as s
    from digitorn_site.api.asyncviews import _shared_fields

    shared = _shared_fields(s.ChatSerializer)
    assert shared(data={}).fields is shared(data={}).fields
    assert s.ChatSerializer(data={}).fields is not s.ChatSerializer(data={}).fields


def test_the_lean_request_path_streams_through_the_lean_send(monkeypatch):
    """The SSE views are lean requests (``_handle_lean``): their stream goes through ``_send_stream``,
    not Django's send_response, and arrives whole."""
    from django.urls import ResolverMatch

    closed: list[str] = []
    djangos: list[object] = []
    original = ASGIHandler.send_response

    async def recording(self, response, send):
        djangos.append(response)
        return await original(self, response, send)

    monkeypatch.setattr(ASGIHandler, "send_response", recording)

    async def view(request):
        return _response(_frames(closed))

    async def run() -> list[dict]:
        sent: list[dict] = []
        pending = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict:
            if pending:
                return pending.pop()
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": "/api/x", "raw_path": b"/api/x", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        }
        async with ThreadSensitiveContext():  # as ApiASGIHandler.__call__ enters it
            await asgi.api_asgi_app._handle_lean(scope, receive, send, ResolverMatch(view, (), {}))
        return sent

    sent = async_to_sync(run)()
    assert djangos == []
    assert sent[0]["status"] == 200 and (b"Content-Type", b"text/event-stream") in sent[0]["headers"]
    assert b"".join(m.get("body", b"") for m in sent[1:]).startswith(b"event: connected\n")
    assert sent[-1] == {"type": "http.response.body"} and closed == ["closed"]
