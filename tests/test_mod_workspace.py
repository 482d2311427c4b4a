"""workspace module: the original's six primitives over the app's workspace folder on disk."""

from __future__ import annotations

import os

import pytest

from tests.modkit import err, make_app, ok

pytestmark = pytest.mark.django_db


@pytest.fixture
def app(ws):
    return make_app(ws, workspace={})


def test_write_read_edit_glob_grep_delete(app, ws):
    written = ok(app, "workspace.write", path="src/App.tsx", content="export const a = 1;\nexport const b = 2;\n")
    assert written == {"path": "src/App.tsx", "language": "typescript", "size": 40, "lines": 2}
    assert (ws / "src" / "App.tsx").read_text().startswith("export const a")
    read = ok(app, "workspace.read", path="src/App.tsx")
    assert read["content"] == "1\texport const a = 1;\n2\texport const b = 2;"
    ok(app, "workspace.edit", path="src/App.tsx", old_string="b = 2", new_string="b = 3")
    assert "b = 3" in (ws / "src" / "App.tsx").read_text()
    ok(app, "workspace.write", path="_state/graph/nodes/memory.json", content='{"status": "idle"}')
    ok(app, "workspace.write", path="_state/graph/nodes/http.json", content='{"status": "active"}')
    globbed = ok(app, "workspace.glob", pattern="_state/graph/nodes/*.json")
    assert globbed["matches"] == ["_state/graph/nodes/http.json", "_state/graph/nodes/memory.json"]
    assert ok(app, "workspace.glob", pattern="**/*.tsx")["matches"] == ["src/App.tsx"]
    grep = ok(app, "workspace.grep", pattern=r'"status": "a\w+"')
    assert grep["matches"] == [{"path": "_state/graph/nodes/http.json", "line": 1, "text": '{"status": "active"}'}]
    assert ok(app, "workspace.grep", pattern="export", path="src")["count"] == 2
    ok(app, "workspace.delete", path="_state/graph/nodes/http.json")
    assert not (ws / "_state" / "graph" / "nodes" / "http.json").exists()


def test_errors_use_the_original_messages(app, ws):
    assert "File not found: nope.txt" in err(app, "workspace.read", path="nope.txt")
    ok(app, "workspace.write", path="a.txt", content="x x")
    assert "old_string not found in a.txt" in err(app, "workspace.edit", path="a.txt", old_string="y", new_string="z")
    assert "appears 2 times" in err(app, "workspace.edit", path="a.txt", old_string="x", new_string="z")
    assert "File not found" in err(app, "workspace.delete", path="missing.txt")
    assert "regular expression" in err(app, "workspace.grep", pattern="(")


def test_confined_to_the_workspace(app, ws, tmp_path):
    (tmp_path / "secret.txt").write_text("top secret")
    os.symlink(tmp_path / "secret.txt", ws / "link.txt")
    assert "outside the workspace" in err(app, "workspace.read", path="../secret.txt")
    assert "outside the workspace" in err(app, "workspace.read", path="link.txt")
    assert "outside the workspace" in err(app, "workspace.write", path="../x.txt", content="no")
    assert "outside the workspace" in err(app, "workspace.delete", path="link.txt")
    assert ok(app, "workspace.grep", pattern="secret")["count"] == 0
    assert (tmp_path / "secret.txt").exists()


def test_hard_links_and_catastrophic_patterns(app, ws, tmp_path):
    """A hard link planted in the workspace is neither read nor written (it would reach a file
    outside), and grep runs on RE2, so `(a+)+$` over a long line returns instead of backtracking."""
    (tmp_path / "outside.txt").write_text("outside secret")
    os.link(tmp_path / "outside.txt", ws / "planted.txt")
    assert "link" in err(app, "workspace.read", path="planted.txt")
    assert "link" in err(app, "workspace.write", path="planted.txt", content="overwritten")
    assert (tmp_path / "outside.txt").read_text() == "outside secret"
    ok(app, "workspace.write", path="long.txt", content="a" * 60 + "!\n")
    assert ok(app, "workspace.grep", pattern="(a+)+$")["count"] == 0


def test_size_cap(ws):
    app = make_app(ws, workspace={"max_file_bytes": 10})
    assert "max_file_bytes" in err(app, "workspace.write", path="big.txt", content="x" * 11)
    (ws / "big.txt").write_text("y" * 50)
    assert "max_file_bytes" in err(app, "workspace.read", path="big.txt")
