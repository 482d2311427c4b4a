"""mcp module: real MCP servers (tests/mcp_server.py, official SDK) over stdio and streamable HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port

from apps_registry.manifest.compiled import Capabilities, CapabilityRule
from digitorn_site.errors import ValidationError
from tests.modkit import call, err, make_app, ok
from tooling import registry
from tooling.index import build_index, cached_index
from tooling.modules.mcp.pool import POOL

pytestmark = pytest.mark.django_db

SERVER = str(Path(__file__).with_name("mcp_server.py"))


@pytest.fixture(scope="module", params=["http", "sse"])
def http_server(request):
    port = free_port()
    proc = subprocess.Popen([sys.executable, SERVER, request.param, str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    yield request.param, f"http://127.0.0.1:{port}/" + ("mcp" if request.param == "http" else "sse")
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def stdio_app(tmp_path, request):
    app_id = f"mcp-{request.node.name[:40]}".replace("[", "-").replace("]", "")
    app = make_app(tmp_path, app_id=app_id, mcp={"servers": {"notes": {"command": "python", "args": [SERVER, "stdio"],
                                                                      "timeout": 20}}})
    yield app
    POOL.stop(app.app_id)


def test_stdio_server_tools_become_the_virtual_module(stdio_app):
    index = build_index(stdio_app)
    names = {t.name for t in index.tools}
    assert {"mcp_notes.add", "mcp_notes.note_write", "mcp_notes.note_delete", "mcp_notes.whoami"} <= names
    # mcp's own actions are callable by name but hidden from the tool list, categories and search.
    assert not [n for n in names if n.startswith("mcp.")] and "mcp" not in index.categories
    assert index.get("mcp.call_tool").name == "mcp.call_tool"
    risk = {t.name: t.risk_level for t in index.tools}
    assert risk["mcp_notes.add"] == "low"
    assert risk["mcp_notes.note_write"] == "medium"
    assert risk["mcp_notes.note_delete"] == "high"
    assert risk["mcp_notes.crash"] == "high"  # no annotations: assume the worst
    assert index.categories["mcp_notes"].tools
    assert index.search("add two integers sum")[0][0].name == "mcp_notes.add"
    assert ok(stdio_app, "mcp_notes.add", a=2, b=40)["text"] == "42"
    assert ok(stdio_app, "mcp_notes__add", a=1, b=1)["structured"] == {"result": 2}
    # The server's schema validates params before the call.
    with pytest.raises(ValidationError, match="params.a"):
        call(stdio_app, "mcp_notes.add", a="x", b=1)


def test_module_actions_and_reuse_across_calls(stdio_app):
    first = ok(stdio_app, "mcp_notes.whoami")["text"]
    ok(stdio_app, "mcp.call_tool", server_id="notes", tool_name="note_write", arguments={"name": "a", "text": "hi"})
    assert ok(stdio_app, "mcp_notes.whoami")["text"] == first  # the same process serves every call
    assert ok(stdio_app, "mcp.read_resource", server_id="notes", uri="notes://all")["text"] == "a: hi"
    assert [r["uri"] for r in ok(stdio_app, "mcp.list_resources", server_id="notes")["resources"]] == ["notes://all"]
    assert ok(stdio_app, "mcp.list_prompts", server_id="notes")["prompts"][0]["name"] == "summarize"
    prompt = ok(stdio_app, "mcp.get_prompt", server_id="notes", prompt_name="summarize", arguments={"topic": "tides"})
    assert "Summarize tides" in prompt["messages"][0]["content"]["text"]
    listed = ok(stdio_app, "mcp.list_servers")
    assert listed["servers"][0]["status"] == "connected" and listed["servers"][0]["tools_count"] >= 5
    assert ok(stdio_app, "mcp.health_check")["healthy"] is True
    assert "MCP tool 'notes.fail' failed" in err(stdio_app, "mcp_notes.fail")
    assert "no MCP server 'other'" in err(stdio_app, "mcp.call_tool", server_id="other", tool_name="add")


def test_a_dead_server_is_restarted_on_the_next_call(stdio_app):
    pid = ok(stdio_app, "mcp_notes.whoami")["text"]
    message = err(stdio_app, "mcp_notes.crash")
    assert "closed the connection during the call" in message
    assert ok(stdio_app, "mcp_notes.add", a=1, b=2)["text"] == "3"
    assert ok(stdio_app, "mcp_notes.whoami")["text"] != pid
    ok(stdio_app, "mcp.disconnect", server_id="notes")
    assert ok(stdio_app, "mcp.list_servers")["servers"][0]["status"] == "stopped"
    assert ok(stdio_app, "mcp.reconnect", server_id="notes")["status"] == "connected"


def test_http_server(tmp_path, http_server):
    kind, url = http_server
    server = {"url": url, "timeout": 20, **({"transport": "sse"} if kind == "sse" else {})}
    app = make_app(tmp_path, app_id=f"mcp-{kind}", mcp={"servers": {"remote": server}})
    try:
        index = build_index(app)
        assert "mcp_remote.add" in {t.name for t in index.tools}
        assert ok(app, "mcp_remote.add", a=20, b=22)["text"] == "42"
        assert ok(app, "mcp.list_tools", server_id="remote")["tools"]
    finally:
        POOL.stop(app.app_id)


def test_unreachable_servers_are_clear_errors_and_do_not_hang(tmp_path):
    port = free_port()
    app = make_app(tmp_path, app_id="mcp-down", mcp={"servers": {
        "gone": {"url": f"http://127.0.0.1:{port}/mcp", "timeout": 3},
        "nocmd": {"command": "/nonexistent/mcp-server", "timeout": 3},
        "mute": {"command": "sleep", "args": ["60"], "timeout": 2},
    }})
    try:
        index = cached_index(app)  # the three connect concurrently; none hangs (pytest-timeout guards)
        assert not [t for t in index.tools if t.module.startswith("mcp_")]
        assert index.complete is False
        assert "cannot connect to MCP server 'gone'" in err(app, "mcp.list_tools", server_id="gone")
        assert "command not found" in err(app, "mcp.list_tools", server_id="nocmd")
        assert "did not answer within 2 s" in err(app, "mcp.list_tools", server_id="mute")
        statuses = {s["server_id"]: s["status"] for s in ok(app, "mcp.list_servers")["servers"]}
        assert statuses == {"gone": "error", "nocmd": "error", "mute": "error"}
        assert ok(app, "mcp.health_check")["healthy"] is False
    finally:
        POOL.stop(app.app_id)


def test_grants_on_mcp_cover_the_virtual_modules(stdio_app):
    from dataclasses import replace

    from approvals.policy import resolve_policy

    caps = Capabilities(grant=(CapabilityRule(module="mcp"),), default_policy="block")
    app = replace(stdio_app, capabilities=caps)
    assert resolve_policy(app, None, "mcp_notes", "note_delete", "high") == "auto"
    denied = replace(stdio_app, capabilities=Capabilities(deny=(CapabilityRule(module="mcp_notes", actions=("crash",)),)))
    assert resolve_policy(denied, None, "mcp_notes", "crash", "high") == "block"
    assert resolve_policy(denied, None, "mcp_notes", "add", "low") != "block"
    assert registry.virtual_module_ids(stdio_app.modules) == {"mcp_notes": "mcp"}
    assert registry.get_module("mcp_notes").server_id == "notes"


MANIFEST = f"""
schema_version: 2
app: {{app_id: mcpapp, name: mcpapp}}
agents:
  - id: assistant
    modules: [mcp_notes]
    brain: {{provider: scripted, config: {{rules: [{{when: "", steps: [{{call: mcp_notes.add, params: {{a: 1, b: 2}}}}]}}]}}}}
tools:
  modules:
    mcp:
      servers:
        notes: {{command: python, args: ["{SERVER}", stdio]}}
  capabilities:
    default_policy: block
    grant: [{{module: mcp_notes, actions: [add]}}]
    deny: [{{module: mcp_notes, actions: [crash]}}]
"""


def test_manifest_may_name_declared_servers_virtual_modules():
    from apps_registry.manifest.compiler import compile_manifest
    from digitorn_site.errors import ManifestError

    app = compile_manifest(MANIFEST).app
    assert app.agents[0].modules == ("mcp_notes",)
    assert app.capabilities.grant[0].module == "mcp_notes"
    with pytest.raises(ManifestError) as refused:
        compile_manifest(MANIFEST.replace("modules: [mcp_notes]", "modules: [mcp_other]"))
    assert "mcp_other" in str(refused.value.errors)
