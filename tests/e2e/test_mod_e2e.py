"""pdf, git, workspace, web and mcp end to end: a real daemon, turns of a scripted agent (/chat)
and POST /api/apps/{app}/tools/{name}/execute, against real files, a local web server and a real
MCP server (tests/mcp_server.py over stdio)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import AppYaml

from tests.httpkit import QuietHandler, serving
from tests.pdf_factory import make_pdf

pytestmark = pytest.mark.e2e

APP = "modsuite"
MCP_SERVER = str(Path(__file__).parents[1] / "mcp_server.py")
PAGE = (b"<html><head><title>Harbor notes</title></head><body><article><h1>Harbor notes</h1>"
        b"<p>The harbor opens at dawn and closes at dusk; ferries leave every forty minutes from pier two, "
        b"and the fish market runs on the east quay every morning except Sunday.</p>"
        b"<p>Visitors should book the lighthouse tour a day ahead because groups are limited to twelve.</p>"
        b"</article></body></html>")


class _Web(QuietHandler):
    def do_GET(self):
        if self.path.startswith("/search"):
            body = json.dumps({"results": [{"title": "Harbor", "url": "https://harbor.example/", "content": "ferries"}]})
            ctype = "application/json"
        else:
            body, ctype = PAGE.decode(), "text/html"
        self._send(200, body.encode(), ctype)


@pytest.fixture(scope="module")
def web():
    with serving(_Web) as url:
        yield url


@pytest.fixture(scope="module")
def suite(daemon, tmp_path_factory, web):
    root = tmp_path_factory.mktemp("modsuite")
    ws = root / "ws"
    ws.mkdir()
    (ws / "report.pdf").write_bytes(make_pdf(["Harbor report", "Ferry schedule: every forty minutes"], title="Harbor"))
    (ws / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    subprocess.run(["git", "init", "-q", "-b", "main", str(ws / "repo")], check=True)
    (ws / "repo" / "notes.md").write_text("first\n")
    rules = [
        {"when": "pdf", "steps": [{"call": "pdf.extract_text", "params": {"path": "report.pdf"}}, {"say": "PDF: {result}"}]},
        {"when": "broken", "steps": [{"call": "pdf.metadata", "params": {"path": "broken.pdf"}}, {"say": "B: {result}"}]},
        {"when": "commit", "steps": [
            {"call": "git.commit", "params": {"path": "repo", "message": "agent commit", "all": False}},
            {"say": "C: {result}"}]},
        {"when": "stage", "steps": [{"call": "git.add", "params": {"path": "repo"}}, {"say": "S: {result}"}]},
        {"when": "log", "steps": [{"call": "git.log", "params": {"path": "repo"}}, {"say": "L: {result}"}]},
        {"when": "write", "steps": [
            {"call": "workspace.write", "params": {"path": "out/plan.md", "content": "# Plan\nstep one\n"}},
            {"say": "W: {result}"}]},
        {"when": "grep", "steps": [{"call": "workspace.grep", "params": {"pattern": "step"}}, {"say": "G: {result}"}]},
        {"when": "fetch", "steps": [{"call": "web.fetch", "params": {"url": f"{web}/harbor"}}, {"say": "F: {result}"}]},
        {"when": "search", "steps": [{"call": "web.search", "params": {"query": "harbor"}}, {"say": "Q: {result}"}]},
        {"when": "sum", "steps": [
            {"call": "execute_tool", "params": {"name": "mcp_notes.add", "params": {"a": 19, "b": 23}}},
            {"say": "M: {result}"}]},
        {"when": "servers", "steps": [{"call": "mcp.list_servers", "params": {}}, {"say": "V: {result}"}]},
        {"steps": [{"say": "echo: {message}"}]},
    ]
    manifest = {
        "schema_version": 2,
        "app": {"app_id": APP, "name": "Module suite"},
        "agents": [{"id": "assistant", "brain": {"provider": "scripted", "config": {"rules": rules}}}],
        "tools": {"modules": {
            "filesystem": {"workspace": str(ws)},
            "pdf": {},
            "git": {},
            "workspace": {},
            "web": {"allowed_hosts": ["127.0.0.1"], "search": {"backend": "searxng", "url": web}},
            "mcp": {"servers": {"notes": {"command": sys.executable, "args": [MCP_SERVER, "stdio"], "timeout": 30}}},
        }},
    }
    daemon.deploy(AppYaml(root)(manifest, "modsuite.yaml"), force=True)
    return ws


def chat(daemon, text: str, session: str = "mods") -> str:
    return daemon.chat(APP, text, session)


def execute(daemon, tool: str, params: dict) -> dict:
    """The tool's outcome: the execute answer is the tool's result flattened into the envelope."""
    body = daemon.execute(APP, tool, params)
    return {"success": body["success"], "data": body["data"], "error": body["error"]}


def test_pdf_through_a_turn_and_the_api(daemon, suite):
    assert "every forty minutes" in chat(daemon, "read the pdf")
    assert "not a readable PDF" in chat(daemon, "the broken one")
    meta = execute(daemon, "pdf.metadata", {"path": "report.pdf"})
    assert meta["success"] and meta["data"]["title"] == "Harbor" and meta["data"]["page_count"] == 2
    bad = execute(daemon, "pdf.extract_text", {"path": "broken.pdf"})
    assert bad["success"] is False and "broken.pdf" in bad["error"]


def test_git_through_turns_and_the_api(daemon, suite):
    assert "notes.md" in chat(daemon, "stage everything")
    assert '"commit":"' in chat(daemon, "commit it")
    assert "agent commit" in chat(daemon, "show the log")
    log = execute(daemon, "git.log", {"path": "repo"})
    assert log["success"] and log["data"]["commits"][0]["subject"] == "agent commit"
    status = execute(daemon, "git.status", {"path": "repo"})
    assert status["data"]["clean"] is True


def test_workspace_through_a_turn_and_the_api(daemon, suite):
    assert '"lines":2' in chat(daemon, "write the plan")
    assert (suite / "out" / "plan.md").read_text() == "# Plan\nstep one\n"
    assert "out/plan.md" in chat(daemon, "grep it")
    read = execute(daemon, "workspace.read", {"path": "out/plan.md"})
    assert read["data"]["content"] == "1\t# Plan\n2\tstep one"
    outside = execute(daemon, "workspace.read", {"path": "../../etc/passwd"})
    assert outside["success"] is False and "outside the workspace" in outside["error"]


def test_web_through_a_turn_and_the_api(daemon, suite, web):
    assert "lighthouse tour" in chat(daemon, "fetch the page")
    assert "harbor.example" in chat(daemon, "search the web")
    fetched = execute(daemon, "web.fetch", {"url": f"{web}/harbor"})
    assert fetched["success"] and fetched["data"]["title"] == "Harbor notes"
    refused = execute(daemon, "web.fetch", {"url": "http://169.254.169.254/latest/meta-data/"})
    assert refused["success"] is False and "link-local" in refused["error"]


def test_mcp_through_a_turn_and_the_api(daemon, suite):
    assert "42" in chat(daemon, "sum please")
    assert '"status":"connected"' in chat(daemon, "list servers")
    added = execute(daemon, "mcp_notes.add", {"a": 1, "b": 2})
    assert added["success"] and added["data"]["text"] == "3"
    index = daemon.client.get(f"/api/apps/{APP}/index").json()["data"]
    categories = {c["id"]: c for c in index["categories"]}
    assert "mcp_notes" in categories
    risks = {t["name"]: t["risk_level"] for t in categories["mcp_notes"]["tools"]}
    assert risks["mcp_notes.add"] == "low" and risks["mcp_notes.note_delete"] == "high"
    search = daemon.client.get(f"/api/apps/{APP}/tools/search", params={"query": "add two integers sum"})
    assert search.status_code == 200, search.text
    assert search.json()["data"]["tools"][0]["name"] == "mcp_notes.add"
    # A server that crashes mid-call is a tool error; the next call gets a fresh server.
    crashed = execute(daemon, "mcp_notes.crash", {})
    assert crashed["success"] is False and "closed the connection" in crashed["error"]
    assert execute(daemon, "mcp_notes.add", {"a": 2, "b": 2})["data"]["text"] == "4"
