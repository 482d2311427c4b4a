"""Shared pieces of the in-process tests (Django test clients, real DB, real compiler).

The fixtures built on these live in ``tests/conftest.py`` (``admin_key``, ``admin_client``,
``deployed_app``); the plain functions here are imported by the test modules that need them:

- ``ADMIN_KEY`` / ``AUTH`` / ``HEADERS``: the admin key the ``admin_key`` fixture installs, as Django
  test-client extras (``Client(**AUTH)``) and as request headers (``AsyncClient().post(..., headers=HEADERS)``).
- ``admin_client()`` and ``client_for(owner, scopes)`` (a freshly created API key; ``key_for`` returns
  the raw key when a test needs it in another form).
- ``assert_envelope_error(response, status, code)``: the error envelope of every API failure.
- ``scripted_manifest(...)``: the canonical one-agent scripted app as JSON text; ``deploy(text)``;
  ``scripted_app(app_id, modules, ...)``: an app (dict) whose assistant only says hello, for tool tests.
- ``compiles(text)`` / ``manifest_errors(text)``: the compiler with an empty environment;
  ``AVAILABLE_MODULES``, the module list its "not available" errors quote.
- ``post_json(client, url, body)``: a JSON POST (a ``str``/``bytes`` body is sent as is).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from django.test import Client

from apps_registry import services as registry
from apps_registry.manifest import CompileResult, compile_manifest
from digitorn_site.errors import ManifestError
from tooling import registry as tool_registry

ADMIN_KEY = "dg_test_admin_key_shared_by_the_tests"
# The modules this build has, as the compiler lists them (aliases such as `bash` left out).
AVAILABLE_MODULES = ", ".join(
    sorted(m for m in tool_registry.known_actions() if m not in tool_registry.MODULE_ALIASES)
)
AUTH = {"HTTP_AUTHORIZATION": f"Bearer {ADMIN_KEY}"}
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def admin_client() -> Client:
    """A test client authenticated with ``ADMIN_KEY`` (active under the ``admin_key`` fixture)."""
    return Client(**AUTH)


def key_for(owner: str, scopes: list[str]) -> str:
    """The raw value of a freshly created API key of ``owner`` with ``scopes`` (needs the DB)."""
    _, raw = registry.api_key_create(name=f"{owner}-{uuid.uuid4().hex[:6]}", owner=owner, scopes=scopes)
    return raw


def client_for(owner: str, scopes: list[str]) -> Client:
    """A test client authenticated with a freshly created API key of ``owner`` with ``scopes``."""
    return Client(HTTP_AUTHORIZATION=f"Bearer {key_for(owner, scopes)}")


def assert_envelope_error(response, status: int, code: str) -> dict:
    """``response`` is the JSON error envelope ``{success: false, data: null, error, error_code}``
    with HTTP ``status`` and ``error_code == code``; returns the decoded body."""
    # ``headers`` and ``content``: a Django test response or an httpx one (the e2e suites).
    assert response.status_code == status, response.content[:500]
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert body["success"] is False
    assert body["data"] is None
    assert body["error_code"] == code
    assert isinstance(body["error"], str) and body["error"]
    return body


def post_json(client: Client, url: str, body, **extra):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(url, data=data, content_type="application/json", **extra)


SAY_HELLO = {"provider": "scripted", "config": {"rules": [{"when": "", "steps": [{"say": "hello"}]}]}}


def scripted_app(app_id: str, modules: dict, *, agents: list | None = None, capabilities: dict | None = None,
                 runtime: dict | None = None) -> dict:
    """An app (as a dict) whose agent ``assistant`` says hello, followed by ``agents``, with the tool
    ``modules`` and, when given, ``capabilities`` and ``runtime``."""
    doc: dict = {"schema_version": 2, "app": {"app_id": app_id, "name": app_id}}
    if runtime:
        doc["runtime"] = runtime
    doc["agents"] = [{"id": "assistant", "brain": SAY_HELLO}, *(agents or [])]
    doc["tools"] = {"modules": modules}
    if capabilities:
        doc["tools"]["capabilities"] = capabilities
    return doc


def scripted_manifest(app_id: str, ws: Path, rules: list, *, runtime: dict | None = None,
                      capabilities: dict | None = None, mode: str = "conversation") -> str:
    """One scripted agent ``assistant`` following ``rules``, filesystem on ``ws`` and shell, as JSON."""
    doc = {
        "schema_version": 2,
        "app": {"app_id": app_id, "name": app_id, "mode": mode},
        "agents": [{"id": "assistant", "system_prompt": "You help.",
                    "brain": {"provider": "scripted", "config": {"rules": rules}}}],
        "tools": {"modules": {"filesystem": {"workspace": str(ws)}, "shell": {}}},
    }
    if runtime:
        doc["runtime"] = runtime
    if capabilities:
        doc["tools"]["capabilities"] = capabilities
    return json.dumps(doc)


def compiles(text: str, **kwargs) -> CompileResult:
    """``text`` compiled with an empty environment unless ``environ=`` is given."""
    return compile_manifest(text, environ=kwargs.pop("environ", {}), **kwargs)


def manifest_errors(text: str, **kwargs) -> list[dict]:
    """The errors of the ManifestError compiling ``text`` raises (empty environment unless given)."""
    with pytest.raises(ManifestError) as info:
        compile_manifest(text, environ=kwargs.pop("environ", {}), **kwargs)
    return info.value.errors


def deploy(text: str):
    """Deploy manifest ``text`` through the real service, replacing an app of the same id."""
    return registry.app_deploy(text=text, force=True)


def make_workspace(root: Path, files: dict[str, str] | None = None) -> Path:
    """``root/ws`` created, with ``files`` (relative path → text) written in it."""
    ws = root / "ws"
    ws.mkdir()
    for name, text in (files or {}).items():
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / name).write_text(text)
    return ws
