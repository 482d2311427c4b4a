"""rag end to end: a real daemon, turns of a scripted agent (/chat) and
POST /api/apps/{app}/tools/{name}/execute over real workspace files, with incremental re-indexing
seen through the API after the files change on disk."""

from __future__ import annotations

import os

import pytest
from conftest import AppYaml

pytestmark = pytest.mark.e2e

APP = "ragsuite"


@pytest.fixture(scope="module")
def suite(daemon, tmp_path_factory):
    root = tmp_path_factory.mktemp("ragsuite")
    ws = root / "ws"
    (ws / "handbook").mkdir(parents=True)
    (ws / "handbook" / "leave.md").write_text(
        "# Leave\n\nEvery employee gets twenty-five days of paid vacation a year; parental leave is sixteen weeks.\n"
    )
    (ws / "handbook" / "security.md").write_text(
        "# Security\n\nLaptops must use full-disk encryption and lock after five minutes idle.\n"
    )
    (ws / "handbook" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00binary")
    rules = [
        {"when": "index", "steps": [
            {"call": "rag.ingest_directory", "params": {"path": "handbook"}}, {"say": "I: {result}"}]},
        {"when": "vacation", "steps": [
            {"call": "rag.query", "params": {"query": "how many vacation days do employees get"}},
            {"say": "Q: {result}"}]},
        {"when": "passwd", "steps": [
            {"call": "rag.ingest_file", "params": {"path": "../../etc/passwd"}}, {"say": "O: {result}"}]},
        {"steps": [{"say": "echo: {message}"}]},
    ]
    manifest = {
        "schema_version": 2,
        "app": {"app_id": APP, "name": "RAG suite"},
        "agents": [{"id": "assistant", "brain": {"provider": "scripted", "config": {"rules": rules}}}],
        "tools": {"modules": {
            "filesystem": {"workspace": str(ws)},
            "rag": {"chunk_size": 400, "chunk_overlap": 40},
        }},
    }
    daemon.deploy(AppYaml(root)(manifest, "ragsuite.yaml"), force=True)
    return ws


def chat(daemon, text: str, session: str = "rag") -> str:
    return daemon.chat(APP, text, session)


def execute(daemon, tool: str, params: dict) -> dict:
    # The tool's result is flattened into the envelope: {success, data, error} (HTTP 200 either way).
    return daemon.execute(APP, tool, params)


def test_index_and_query_through_a_turn(daemon, suite):
    indexed = chat(daemon, "index the handbook")
    assert '"indexed":2' in indexed and '"skipped":1' in indexed
    answer = chat(daemon, "vacation days?")
    assert "twenty-five days" in answer and "handbook/leave.md" in answer
    refused = chat(daemon, "add the passwd file")
    assert "outside the workspace" in refused


def test_incremental_reindex_and_removal_through_the_api(daemon, suite):
    again = execute(daemon, "rag.ingest_directory", {"path": "handbook"})
    assert again["success"] and again["data"]["indexed"] == 0 and again["data"]["unchanged"] == 2
    (suite / "handbook" / "security.md").write_text(
        "# Security\n\nBadges are required in the server room; visitors sign the log at reception.\n"
    )
    (suite / "handbook" / "travel.md").write_text("Book trains rather than flights for trips under four hours.\n")
    os.unlink(suite / "handbook" / "leave.md")
    synced = execute(daemon, "rag.ingest_directory", {"path": "handbook"})["data"]
    assert (synced["indexed"], synced["unchanged"], synced["removed"]) == (2, 0, 1)
    hits = execute(daemon, "rag.query", {"query": "visitors sign the log", "top_k": 3})["data"]["results"]
    assert hits[0]["citation"]["source_id"] == "handbook/security.md" and "Badges" in hits[0]["text"]
    sources = {r["citation"]["source_id"]
               for r in execute(daemon, "rag.search", {"query": "paid vacation parental leave", "top_k": 10})[
                   "data"]["results"]}
    assert "handbook/leave.md" not in sources
    removed = execute(daemon, "rag.remove", {"path": "handbook/travel.md"})["data"]
    assert removed["removed"] == ["handbook/travel.md"]
    listed = execute(daemon, "rag.list_knowledge_bases", {})["data"]
    assert listed["knowledge_bases"][0]["doc_count"] == 1


def test_bad_input_is_a_clear_error_never_a_500(daemon, suite):
    bad = execute(daemon, "rag.ingest_file", {"path": "handbook/logo.png"})
    assert bad["success"] is False and "not UTF-8 text" in bad["error"]
    missing = execute(daemon, "rag.delete_knowledge_base", {"name": "nope"})
    assert missing["success"] is False and "no knowledge base 'nope'" in missing["error"]
    response = daemon.client.post(f"/api/apps/{APP}/tools/rag.query/execute",
                                  json={"params": {"query": "x", "top_k": 500}}, timeout=60)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["success"] is False and "params.top_k" in body["error"]
