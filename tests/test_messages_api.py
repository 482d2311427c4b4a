"""POST /sessions/{sid}/messages with the original's body: 1 MiB cap in UTF-8 bytes, images, workspace,
queue_mode, client_message_id; and /run's input_type as metadata."""

from __future__ import annotations

import base64
import json

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

from conversations import services
from conversations.models import Turn
from tests import test_sessions_api as base
from tests.helpers import HEADERS, admin_client, assert_envelope_error

app = base.app  # the sessions tests' apps

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("admin_key")]

MIB = 1024 * 1024
PNG = {"data": base64.b64encode(b"\x89PNG\r\n\x1a\n").decode(), "mime": "image/png", "name": "a.png"}


def send(body, url="/api/apps/demo/sessions/m1/messages", raw: bytes | None = None):
    async def go():
        data = raw if raw is not None else json.dumps(body)
        return await AsyncClient().post(url, data=data, content_type="application/json", headers=HEADERS)

    return async_to_sync(go)()


def test_message_cap_is_one_mib_of_utf8(app):
    # 1 MiB of ASCII passes (the old cap was 100,000 characters); the body is over the 1 MiB JSON limit.
    assert send({"message": "a" * MIB}).status_code == 202
    body = assert_envelope_error(send({"message": "a" * (MIB + 1)}), 400, "VALIDATION_ERROR")
    assert "bytes" in body["error"]
    # Counted in bytes: 300,000 four-byte characters are 1.2 MB.
    assert_envelope_error(send({"message": "😀" * 300_000}), 400, "VALIDATION_ERROR")


def test_images_are_validated_then_ignored(app):
    accepted = send({"message": "look", "images": [PNG]})
    assert accepted.status_code == 202, accepted.content
    assert accepted.json()["data"]["ignored"] == ["images"]
    body = assert_envelope_error(send({"message": "x", "images": [{**PNG, "mime": "audio/wav"}]}), 415, "UNSUPPORTED_MEDIA_TYPE")
    assert "images[0].mime" in body["error"]
    assert_envelope_error(send({"message": "x", "images": [PNG] * 11}), 400, "VALIDATION_ERROR")
    assert_envelope_error(send({"message": "x", "images": [{**PNG, "data": "not base64!"}]}), 400, "VALIDATION_ERROR")
    assert_envelope_error(send({"message": "x", "images": "one"}), 400, "VALIDATION_ERROR")
    assert_envelope_error(send({"message": "x", "images": [{"mime": "image/png"}]}), 400, "VALIDATION_ERROR")


def test_workspace_is_accepted_and_ignored(app):
    data = send({"message": "hi", "workspace": "/etc"}).json()["data"]
    assert data["ignored"] == ["workspace"]


def test_client_message_id_is_echoed(app):
    data = send({"message": "hi", "client_message_id": "bubble-7"}).json()["data"]
    assert data["client_message_id"] == "bubble-7" and data["queue_mode"] == "async"
    assert send({"message": "hi"}).json()["data"]["client_message_id"] is None
    assert_envelope_error(send({"message": "hi", "client_message_id": 7}), 400, "VALIDATION_ERROR")


def test_unknown_queue_mode_is_400(app):
    body = assert_envelope_error(send({"message": "hi", "queue_mode": "later"}), 400, "VALIDATION_ERROR")
    assert "queue_mode" in body["error"] and "replace_last" in body["error"]


def test_queue_mode_wait_answers_the_result(app):
    response = send({"message": "hello", "queue_mode": "wait"})
    assert response.status_code == 200, response.content
    data = response.json()["data"]
    assert data["result"]["content"] == "echo: hello" and data["queue_mode"] == "wait"


def test_queue_mode_replace_last_overwrites_the_waiting_message(app):
    from digitorn_site.api.auth import ADMIN_PRINCIPAL

    # Two turns queued by the service (which starts nothing): the second one waits behind the first.
    services.message_enqueue(app_id="demo", session_id="r1", principal=ADMIN_PRINCIPAL, message="first")
    waiting = services.message_enqueue(app_id="demo", session_id="r1", principal=ADMIN_PRINCIPAL, message="second")
    response = send({"message": "second, corrected", "queue_mode": "replace_last"},
                    url="/api/apps/demo/sessions/r1/messages")
    assert response.status_code == 202, response.content
    data = response.json()["data"]
    assert data["replaced"] is True and data["correlation_id"] == waiting.correlation_id
    contents = list(Turn.objects.filter(session__session_id="r1").order_by("id").values_list("content", flat=True))
    assert contents[:2] == ["first", "second, corrected"]
    # Nothing waiting: the message is queued normally.
    fresh = send({"message": "alone", "queue_mode": "replace_last"}, url="/api/apps/demo/sessions/r2/messages")
    assert fresh.status_code == 202 and fresh.json()["data"]["replaced"] is False


def test_run_input_type_is_metadata(app):
    async def go(body):
        return await AsyncClient().post("/api/apps/oneshot/run", data=json.dumps(body),
                                        content_type="application/json", headers=HEADERS)

    response = async_to_sync(go)({"input": "hello", "input_type": "json"})
    assert response.status_code == 200, response.content
    assert response.json()["data"]["content"] == "ran: hello"  # not "[input_type: json]\nhello"
    assert_envelope_error(async_to_sync(go)({"input": "x", "input_type": "video"}), 400, "VALIDATION_ERROR")


def test_other_json_bodies_keep_the_one_mib_limit(app):
    big = json.dumps({"value": "v" * (MIB + 10)})
    response = admin_client().put(
        "/api/apps/demo/secrets/BIG", data=big, content_type="application/json"
    )
    assert_envelope_error(response, 413, "PAYLOAD_TOO_LARGE")
