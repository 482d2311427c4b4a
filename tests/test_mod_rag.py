"""rag module: real files, the shipped embedding model, the real database; incremental re-indexing,
retrieval quality on a small corpus, and bad input as clear tool errors."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digitorn_site.errors import ValidationError
from tests.modkit import call, err, make_app, ok
from tests.pdf_factory import make_pdf
from tooling.models import RagChunk, RagDocument
from tooling.modules.rag import chunk_text
from tooling.search import default_embedder

pytestmark = pytest.mark.django_db

DOCS = {
    "docs/holidays.md": "# Leave policy\n\nEmployees get twenty-five days of paid vacation per year. "
    "Unused holiday days can be carried over until March.\n",
    "docs/expenses.md": "# Expenses\n\nTravel expenses are reimbursed within thirty days when the receipt "
    "is attached to the claim in the finance portal.\n",
    "src/deploy.sh": "#!/bin/sh\n# Deploy the web server to production with rsync, then restart nginx.\n"
    "rsync -a build/ prod:/srv/www\nssh prod systemctl restart nginx\n",
    "notes/kitchen.txt": "The coffee machine on the third floor is descaled every Friday afternoon.\n",
}


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    for rel, text in DOCS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\nvacation = hidden folders are not indexed\n")
    return root


def top(data: dict) -> str:
    return data["results"][0]["citation"]["source_id"]


def test_index_a_folder_and_retrieve_by_meaning_and_by_word(ws):
    app = make_app(ws, rag={})
    summary = ok(app, "rag.ingest_directory")
    assert summary["indexed"] == 4 and summary["skipped"] == 1 and summary["removed"] == 0
    assert summary["files"] == 5  # image.bin was looked at; .git was not
    assert top(ok(app, "rag.query", query="how many days off do employees get per year")) == "docs/holidays.md"
    assert top(ok(app, "rag.query", query="reimbursement of travel costs")) == "docs/expenses.md"
    assert top(ok(app, "rag.query", query="restart nginx in production")) == "src/deploy.sh"
    answer = ok(app, "rag.query", query="coffee machine descaling", top_k=2)
    first = answer["results"][0]
    assert first["citation"] == {"source_type": "file", "source_id": "notes/kitchen.txt", "location": "line 1",
                                 "chunk_index": 0}
    assert 0 < first["score"] <= 1 and answer["count"] <= 2
    assert "[1] (source: notes/kitchen.txt, line 1)" in answer["context_block"]
    rows = RagChunk.objects.filter(document__source_id="docs/holidays.md")
    vector = bytes(rows.first().vector)
    assert len(vector) == 4 * default_embedder().dim  # float32 bytes in the database


def test_reindex_is_incremental_changed_new_and_deleted_files(ws):
    app = make_app(ws, rag={})
    ok(app, "rag.ingest_directory")
    before = {d.source_id: d.indexed_at for d in RagDocument.objects.all()}
    again = ok(app, "rag.ingest_directory")
    assert (again["indexed"], again["unchanged"], again["removed"]) == (0, 4, 0)
    assert {d.source_id: d.indexed_at for d in RagDocument.objects.all()} == before

    (ws / "docs" / "holidays.md").write_text("# Leave policy\n\nThe office closes for a sabbatical week in August.\n")
    (ws / "docs" / "new.md").write_text("Parking permits are renewed at the front desk.\n")
    (ws / "notes" / "kitchen.txt").unlink()
    # Same size and content but touched: re-read, hash equal, not re-embedded.
    os.utime(ws / "docs" / "expenses.md", ns=(1, 1))
    third = ok(app, "rag.ingest_directory")
    assert (third["indexed"], third["unchanged"], third["removed"]) == (2, 2, 1)
    assert RagDocument.objects.get(source_id="docs/expenses.md").indexed_at == before["docs/expenses.md"]
    assert top(ok(app, "rag.query", query="sabbatical week in August")) == "docs/holidays.md"
    assert top(ok(app, "rag.query", query="parking permit renewal")) == "docs/new.md"
    found = ok(app, "rag.search", query="coffee machine descaled", top_k=10)
    assert all(r["citation"]["source_id"] != "notes/kitchen.txt" for r in found["results"])
    assert not RagChunk.objects.filter(text__contains="twenty-five days").exists()


def test_sources_are_synced_before_each_query(ws):
    app = make_app(ws, rag={"sources": ["docs"]})
    assert top(ok(app, "rag.query", query="paid vacation days")) == "docs/holidays.md"
    assert not RagDocument.objects.filter(source_id="src/deploy.sh").exists()  # outside the sources
    (ws / "docs" / "holidays.md").write_text("Holidays: the team retreat happens in the mountains in June.\n")
    assert "mountains" in ok(app, "rag.query", query="where is the team retreat")["results"][0]["text"]
    (ws / "docs" / "holidays.md").unlink()
    assert all(r["citation"]["source_id"] != "docs/holidays.md"
               for r in ok(app, "rag.query", query="team retreat", top_k=10)["results"])


def test_sources_in_the_originals_object_form(ws):
    """The original's `sources: [{type: file, path, knowledge_base, ...}]`: folders inside the workspace
    are synced into their knowledge base; a path written for another machine and a database source
    are skipped instead of failing every query."""
    app = make_app(ws, rag={"sources": [
        {"type": "file", "path": "docs", "knowledge_base": "handbook", "extensions": [".md"], "recursive": True},
        {"type": "file", "path": "C:/Users/someone/elsewhere"},
        {"type": "database", "connection_id": "main_db"},
    ]})
    assert top(ok(app, "rag.query", query="paid vacation days", knowledge_base="handbook")) == "docs/holidays.md"
    assert set(RagDocument.objects.values_list("knowledge_base", flat=True)) == {"handbook"}
    assert not RagDocument.objects.filter(source_id="src/deploy.sh").exists()


def test_ingest_texts_replace_by_id_remove_and_knowledge_bases(ws):
    app = make_app(ws, rag={})
    added = ok(app, "rag.ingest", documents=["The launch code name is Bluebird.", "Budget review is on Tuesday."],
               ids=["launch", "budget"], metadata=[{"owner": "ann"}, {}], kb="project")
    assert added["ids"] == ["launch", "budget"] and added["chunks"] == 2
    assert ok(app, "rag.query", query="code name of the launch", kb="project")["results"][0]["citation"] == {
        "source_type": "text", "source_id": "launch", "location": "line 1", "chunk_index": 0}
    assert ok(app, "rag.search", query="Bluebird launch")["results"][0]["metadata"] == {"owner": "ann"}
    ok(app, "rag.ingest", text="The launch code name is Kestrel now.", ids=["launch"], knowledge_base="project")
    texts = [r["text"] for r in ok(app, "rag.query", query="launch code name", kb="project", top_k=5)["results"]]
    assert any("Kestrel" in t for t in texts) and not any("Bluebird" in t for t in texts)
    # The default knowledge base does not see another one's texts; search sees all of them.
    assert ok(app, "rag.query", query="launch code name")["count"] == 0
    assert ok(app, "rag.search", query="budget review")["results"][0]["knowledge_base"] == "project"

    assert ok(app, "rag.ingest", path="docs/expenses.md")["status"] == "indexed"  # a file, as ingest_file
    assert ok(app, "rag.ingest", path="src")["indexed"] == 1  # a folder, as ingest_directory
    assert "not both" in err(app, "rag.ingest", path="src", text="x")
    listed = ok(app, "rag.list_knowledge_bases")
    assert {(k["name"], k["doc_count"]) for k in listed["knowledge_bases"]} == {("default", 2), ("project", 2)}
    assert listed["retrieval"] == "hybrid"
    assert ok(app, "rag.remove", path="src")["removed"] == ["src/deploy.sh"]
    assert ok(app, "rag.remove", ids=["budget", "nope"], kb="project")["removed"] == ["budget"]
    assert (ws / "src" / "deploy.sh").exists()  # only the index changed
    assert ok(app, "rag.delete_knowledge_base", name="project")["documents"] == 1
    assert "no knowledge base 'project'" in err(app, "rag.delete_knowledge_base", name="project")
    assert RagChunk.objects.filter(document__knowledge_base="project").count() == 0


def test_index_is_scoped_per_app(ws):
    ok(make_app(ws, app_id="one", rag={}), "rag.ingest_directory")
    other = make_app(ws, app_id="two", rag={})
    assert ok(other, "rag.search", query="paid vacation")["count"] == 0
    assert ok(other, "rag.list_knowledge_bases")["count"] == 0


def test_single_file_unchanged_then_forced_and_pdf(ws):
    (ws / "manual.pdf").write_bytes(make_pdf(["Boiler manual", "Bleed the radiators every autumn."]))
    app = make_app(ws, rag={})
    assert ok(app, "rag.ingest_file", path="manual.pdf")["status"] == "indexed"
    assert ok(app, "rag.ingest_file", file_path="manual.pdf")["status"] == "unchanged"
    assert ok(app, "rag.ingest_file", path="manual.pdf", force=True)["status"] == "indexed"
    assert top(ok(app, "rag.query", query="bleed the radiators")) == "manual.pdf"
    small = ok(app, "rag.ingest_file", path="docs/holidays.md", chunk_size=60, chunk_overlap=10)
    assert small["chunks"] > 1


def test_keyword_only_when_the_model_is_off(ws, monkeypatch):
    default_embedder.cache_clear()
    monkeypatch.setenv("DIGITORN_EMBEDDING_MODEL", "off")
    try:
        app = make_app(ws, rag={})
        ok(app, "rag.ingest_directory")
        assert RagChunk.objects.filter(vector=b"").count() == RagChunk.objects.count() > 0
        assert top(ok(app, "rag.query", query="nginx")) == "src/deploy.sh"
        assert ok(app, "rag.list_knowledge_bases")["retrieval"] == "bm25"
    finally:
        default_embedder.cache_clear()
        monkeypatch.delenv("DIGITORN_EMBEDDING_MODEL")
    # Back with a model: documents embedded without one are re-embedded on the next sync.
    again = ok(make_app(ws, rag={}), "rag.ingest_directory")
    assert again["indexed"] == 4


def test_bad_input_is_a_clear_tool_error(ws, tmp_path):
    (tmp_path / "secret.txt").write_text("outside the workspace")
    os.symlink(tmp_path / "secret.txt", ws / "link.txt")
    os.link(ws / "docs" / "expenses.md", ws / "hard.md")
    os.mkfifo(ws / "pipe.txt")
    app = make_app(ws, rag={"max_file_bytes": 10_000})
    assert "outside the workspace" in err(app, "rag.ingest_file", path="../secret.txt")
    assert "outside the workspace" in err(app, "rag.ingest_file", path="link.txt")
    assert "hard links" in err(app, "rag.ingest_file", path="hard.md")
    assert "not a regular file" in err(app, "rag.ingest_file", path="pipe.txt")  # never blocks on the fifo
    assert "does not exist" in err(app, "rag.ingest_file", path="missing.md")
    assert "is a folder" in err(app, "rag.ingest_file", path="docs")
    assert "not UTF-8 text" in err(app, "rag.ingest_file", path="image.bin")
    (ws / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    assert "'broken.pdf' is not a readable PDF" in err(app, "rag.ingest_file", path="broken.pdf")
    assert "is a file" in err(app, "rag.ingest_directory", path="docs/holidays.md")
    assert "outside the workspace" in err(app, "rag.ingest_directory", path="/etc")
    assert "outside the workspace" in err(app, "rag.remove", path="../x")
    assert "knowledge base name" in err(app, "rag.query", query="x", knowledge_base="../etc")
    assert "chunk_overlap" in err(app, "rag.ingest_file", path="docs/holidays.md", chunk_size=100, chunk_overlap=100)
    assert "params.query" in err(app, "rag.query", query="   ")
    assert "params.documents" in err(app, "rag.ingest")
    assert "params.ids" in err(app, "rag.ingest", documents=["a", "b"], ids=["one"])
    assert "params.path" in err(app, "rag.remove")
    assert "max_file_bytes" in err(app, "rag.ingest", text="x" * 10_001)
    deep = ws.joinpath(*(["d" * 250] * 5))
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_text("a file whose path is longer than the index keeps")
    long_path = str((deep / "deep.txt").relative_to(ws))
    assert "characters" in err(app, "rag.ingest_file", path=long_path)
    # The directory walk skips what a single call refuses, and the index holds none of it.
    # (expenses.md has two links now, so it is refused as well.)
    summary = ok(app, "rag.ingest_directory")
    assert summary["indexed"] == 3
    bad = ["link.txt", "hard.md", "docs/expenses.md", "pipe.txt", "image.bin", "broken.pdf"]
    assert not RagDocument.objects.filter(source_id__in=bad).exists()
    assert "max_chunks" in err(make_app(ws, app_id="tiny", rag={"max_chunks": 1}), "rag.ingest",
                               documents=["one", "two"])


@pytest.mark.parametrize(
    ("tool", "params", "field"),
    [
        ("rag.query", {"query": "x", "top_k": 0}, "params.top_k"),
        ("rag.search", {"query": "x", "bogus": 1}, "params.bogus"),
        ("rag.ingest", {"documents": "not a list"}, "params.documents"),
        ("rag.query", {"query": "x" * 2001}, "params.query"),
    ],
)
def test_params_outside_the_schema_are_refused_naming_the_field(ws, tool, params, field):
    with pytest.raises(ValidationError) as info:
        call(make_app(ws, rag={}), tool, **params)
    assert str(info.value).startswith(field)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("ab \n."), max_size=400), size=st.integers(2, 80),
       overlap=st.integers(0, 79))
def test_chunks_cover_the_text_in_order_and_stay_within_size(text, size, overlap):
    if overlap >= size:
        with pytest.raises(ValueError):
            chunk_text(text, size, overlap)
        return
    chunks = chunk_text(text, size, overlap)
    for start, end, piece in chunks:
        assert text[start:end] == piece and 0 < end - start <= size
    starts = [c[0] for c in chunks]
    assert starts == sorted(set(starts))
    # Every non-blank character is in some chunk.
    covered = set()
    for start, end, _ in chunks:
        covered.update(range(start, end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


@pytest.mark.django_db(transaction=True)
def test_concurrent_indexing_of_the_same_folder_leaves_one_consistent_index(ws):
    """Four threads (each its own DB connection) sync the same folder at once: each call succeeds or
    says to try again, and the index ends with one document per file and every chunk accounted for."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    from tests.modkit import call

    app = make_app(ws, rag={})

    def sync(_):
        try:
            return call(app, "rag.ingest_directory")
        finally:
            connection.close()

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(sync, range(4)))
    for outcome in outcomes:
        assert outcome.status == "ok" or "try again" in outcome.error, outcome.error
    assert sorted(RagDocument.objects.values_list("source_id", flat=True)) == sorted(DOCS)
    for doc in RagDocument.objects.all():
        assert doc.chunks.count() == doc.chunk_count > 0
    assert ok(app, "rag.ingest_directory")["unchanged"] == 4
