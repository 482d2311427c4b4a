"""pdf module: text, metadata and search of real PDF files; corrupt or oversized files are tool errors."""

from __future__ import annotations

import os

import pytest

from tests.modkit import err, make_app, ok
from tests.pdf_factory import make_pdf

pytestmark = pytest.mark.django_db


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "docs").mkdir()
    (root / "docs" / "report.pdf").write_bytes(
        make_pdf(["Quarterly report\nRevenue grew", "Invoices are late", "Appendix: invoices list"],
                 title="Q3 Report", author="Ann")
    )
    return root


def test_extract_text_all_pages_and_a_range(ws):
    app = make_app(ws, pdf={})
    data = ok(app, "pdf.extract_text", path="docs/report.pdf")
    assert data["page_count"] == 3
    assert [p["page"] for p in data["pages"]] == [1, 2, 3]
    assert "Revenue grew" in data["text"] and "Appendix" in data["text"]
    assert data["truncated"] is False
    some = ok(app, "pdf.extract_text", path="docs/report.pdf", pages="2-3")
    assert [p["page"] for p in some["pages"]] == [2, 3]
    assert "Quarterly" not in some["text"]
    cut = ok(app, "pdf.extract_text", path="docs/report.pdf", max_chars=10)
    assert len(cut["text"]) <= 10 and cut["truncated"] is True


def test_metadata_and_search(ws):
    app = make_app(ws, pdf={})
    meta = ok(app, "pdf.metadata", path="docs/report.pdf")
    assert meta["page_count"] == 3 and meta["title"] == "Q3 Report" and meta["author"] == "Ann"
    assert meta["encrypted"] is False
    found = ok(app, "pdf.search", path="docs/report.pdf", query="INVOICES")
    assert [m["page"] for m in found["matches"]] == [2, 3]
    assert "late" in found["matches"][0]["snippet"]


@pytest.mark.parametrize(
    "content",
    [b"not a pdf at all", b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog", make_pdf(["x"])[:120], b""],
    ids=["garbage", "truncated-header", "cut", "empty"],
)
def test_corrupt_pdf_is_a_clear_tool_error(ws, content):
    (ws / "bad.pdf").write_bytes(content)
    app = make_app(ws, pdf={})
    for tool in ("pdf.extract_text", "pdf.metadata", "pdf.search"):
        params = {"path": "bad.pdf"} if tool != "pdf.search" else {"path": "bad.pdf", "query": "x"}
        message = err(app, tool, **params)
        assert "bad.pdf" in message and "PDF" in message


def test_bad_pages_too_large_outside_and_missing(ws, tmp_path):
    app = make_app(ws, pdf={"max_file_bytes": 100})
    assert "bytes" in err(app, "pdf.extract_text", path="docs/report.pdf")
    app = make_app(ws, pdf={})
    assert "page 9 does not exist" in err(app, "pdf.extract_text", path="docs/report.pdf", pages="9")
    assert "params.pages" in err(app, "pdf.extract_text", path="docs/report.pdf", pages="two")
    (tmp_path / "outside.pdf").write_bytes(make_pdf(["secret"]))
    assert "outside the workspace" in err(app, "pdf.extract_text", path="../outside.pdf")
    assert "not a file" in err(app, "pdf.metadata", path="nope.pdf")
    # A hard link planted in the workspace would read the file outside: refused like filesystem's.
    os.link(tmp_path / "outside.pdf", ws / "planted.pdf")
    assert "link" in err(app, "pdf.extract_text", path="planted.pdf")
