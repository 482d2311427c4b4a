"""The plain async views share one helper (``digitorn_site.api.asyncviews``) and one way to parse
input (``digitorn_site.api.base.parse``): every one of them answers a wrong method, a missing key and
a body that is not an object the same way, and the plumbing under them imports no app."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

from conversations.api import serializers as s
from digitorn_site.api.base import parse
from digitorn_site.errors import UnsupportedMediaTypeError, ValidationError
from tests import test_sessions_api as base
from tests.helpers import HEADERS
from tests.helpers import assert_envelope_error as assert_error
from tooling.api.serializers import LaunchSerializer, WaitSerializer
from tooling.models import BackgroundTask

app = base.app

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("admin_key")]

# Every plain async endpoint, with the methods it answers.
ENDPOINTS = [
    ("/api/apps/demo/chat", "POST"),
    ("/api/apps/demo/run", "POST"),
    ("/api/apps/demo/chat/stream", "POST"),
    ("/api/apps/demo/sessions/s1/messages", "POST"),
    ("/api/apps/demo/sessions/s1/events", "GET"),
    ("/api/apps/demo/notifications", "POST"),
    ("/api/apps/demo/background-tasks/task-x", "GET or DELETE"),
    ("/api/apps/demo/background-tasks/task-x/wait", "POST"),
]


def request(method: str, url: str, raw: str | bytes = "", headers: dict | None = None):
    async def go():
        client = AsyncClient()
        call = getattr(client, method.lower())
        if method in ("GET", "DELETE"):
            return await call(url, headers=headers or {})
        return await call(url, data=raw, content_type="application/json", headers=headers or {})

    return async_to_sync(go)()


@pytest.mark.parametrize(("url", "methods"), ENDPOINTS)
def test_missing_key_is_401_with_the_challenge(url, methods):
    response = request(methods.split()[0], url, "{}")
    assert_error(response, 401, "UNAUTHORIZED")
    assert response["WWW-Authenticate"] == 'Bearer realm="digitorn"'


@pytest.mark.parametrize(("url", "methods"), ENDPOINTS)
def test_wrong_method_is_405_naming_the_allowed_ones(url, methods):
    body = assert_error(request("PUT", url, "{}", HEADERS), 405, "METHOD_NOT_ALLOWED")
    assert body["error"].endswith(f"use {methods}.")


@pytest.mark.parametrize("url", [url for url, methods in ENDPOINTS if methods == "POST"])
def test_a_body_that_is_not_an_object_is_400(app, url):
    body = assert_error(request("POST", url, "[1, 2]", HEADERS), 400, "VALIDATION_ERROR")
    assert "JSON object" in body["error"]


def test_an_empty_or_blank_body_reads_as_an_empty_object(app):
    # /notifications takes its session from the query string when the body has none.
    for raw in ("", "  \n"):
        response = request("POST", "/api/apps/demo/notifications?session_id=nobody", raw, HEADERS)
        assert response.status_code == 200, response.content
        assert response.json()["data"] == {"notifications": 0}


def test_wait_timeout_larger_than_a_float_is_a_long_wait_not_a_crash(app):
    BackgroundTask.objects.create(
        task_id="task-done", app_id="demo", principal="admin", tool="shell.run", status="completed"
    )
    raw = json.dumps({"timeout": 10**400})
    response = request("POST", "/api/apps/demo/background-tasks/task-done/wait", raw, HEADERS)
    assert response.status_code == 200, response.content
    assert response.json()["data"]["status"] == "completed"


def test_parse_names_each_field_by_its_path():
    with pytest.raises(ValidationError) as caught:
        parse(s.ChatSerializer, {"session_id": 7, "message": "hi", "images": [{"data": "x", "mime": 3}]})
    paths = {item["path"] for item in caught.value.details["errors"]}
    assert {"session_id", "images.0.mime"} <= paths
    assert caught.value.message.startswith("images.0.")


def test_parse_refuses_a_non_object_with_the_serializers_example():
    with pytest.raises(ValidationError) as caught:
        parse(LaunchSerializer, ["filesystem.ls"])
    assert caught.value.message == (
        'The request body must be a JSON object, got list; for example {"tool": "module.action", "params": {...}}.'
    )
    assert parse(WaitSerializer, {}) == {"timeout": 60.0}


def test_a_non_image_attachment_is_415_before_any_field_error():
    with pytest.raises(UnsupportedMediaTypeError):
        parse(s.MessageSerializer, {"message": 5, "images": [{"data": "", "mime": "audio/wav"}]})


# --- the plumbing imports no app ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
PLUMBING = [
    "digitorn_site.api.envelope", "digitorn_site.api.jsonbody", "digitorn_site.api.exceptions",
    "digitorn_site.api.fields", "digitorn_site.api.base", "digitorn_site.asyncdb", "digitorn_site.principals",
]
APPS = ("conversations", "tooling", "apps_registry", "approvals")


def _project_imports(module: str) -> set[str]:
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            top = name.split(".")[0]
            if top in (*APPS, "digitorn_site") and (
                (ROOT / (name.replace(".", "/") + ".py")).exists() or (ROOT / name.replace(".", "/")).is_dir()
            ):
                found.add(name)
    return found


@pytest.mark.parametrize("module", PLUMBING)
def test_plumbing_reaches_no_app(module):
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(_project_imports(current))
    reached = sorted(m for m in seen if m.split(".")[0] in APPS or m == "digitorn_site.api.auth")
    assert not reached, f"{module} imports {reached}"
