"""git module: real repositories in the workspace; a hostile .git/config must not run anything."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.modkit import err, make_app, ok

pytestmark = pytest.mark.django_db


@pytest.fixture
def app(ws):
    return make_app(ws, git={})


def test_init_add_commit_log_show_diff_branch_checkout(app, ws):
    assert ok(app, "git.init", path="proj")["branch"] == "main"
    (ws / "proj" / "a.txt").write_text("one\n")
    status = ok(app, "git.status", path="proj")
    assert status["untracked"] == ["a.txt"] and status["clean"] is False
    staged = ok(app, "git.add", path="proj")
    assert staged["staged"] == [{"path": "a.txt", "status": "A"}]
    first = ok(app, "git.commit", path="proj", message="first commit")
    assert len(first["commit"]) == 40
    (ws / "proj" / "a.txt").write_text("one\ntwo\n")
    diff = ok(app, "git.diff", path="proj")
    assert "+two" in diff["diff"] and diff["empty"] is False
    ok(app, "git.commit", path="proj", message="second", all=True)
    log = ok(app, "git.log", path="proj")
    assert [c["subject"] for c in log["commits"]] == ["second", "first commit"]
    assert log["commits"][0]["author"] == "Digitorn Agent"
    shown = ok(app, "git.show", path="proj", revision="HEAD~1:a.txt")
    assert shown["output"] == "one\n"
    branches = ok(app, "git.branch", path="proj", name="feature")
    assert set(branches["branches"]) == {"main", "feature"} and branches["current"] == "main"
    assert ok(app, "git.checkout", path="proj", ref="feature")["branch"].startswith("feature")
    assert ok(app, "git.status", path="proj")["clean"] is True


def test_errors_are_tool_errors(app, ws):
    (ws / "plain").mkdir()
    assert "not inside a git repository" in err(app, "git.status", path="plain")
    ok(app, "git.init", path="r")
    assert "not a revision" in err(app, "git.show", path="r", revision="--output=/tmp/x")
    assert "outside the workspace" in err(app, "git.status", path="../..")
    assert "failed" in err(app, "git.commit", path="r", message="nothing staged")
    assert "not a valid branch name" in err(app, "git.branch", path="r", name="-D")


def test_repository_above_the_workspace_is_not_used(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    inner = tmp_path / "ws"
    inner.mkdir()
    app = make_app(inner, git={})
    assert "not inside a git repository" in err(app, "git.status")


def test_gitdir_file_pointing_outside_is_refused(app, ws, tmp_path):
    outside = tmp_path / "elsewhere"
    subprocess.run(["git", "init", "-q", str(outside)], check=True)
    (ws / "linked").mkdir()
    (ws / "linked" / ".git").write_text(f"gitdir: {outside / '.git'}\n")
    assert "outside the workspace" in err(app, "git.status", path="linked")


def _hostile_repo(ws: Path, marker: Path) -> Path:
    repo = ws / "evil"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    payload = f"touch {marker}"
    script = repo / "payload.sh"
    script.write_text(f"#!/bin/sh\n{payload}\nexit 0\n")
    script.chmod(0o755)
    hooks = repo / ".git" / "hooks"
    for hook in ("pre-commit", "commit-msg", "post-commit", "prepare-commit-msg", "post-checkout", "pre-auto-gc"):
        (hooks / hook).write_text(f"#!/bin/sh\n{payload}\n")
        (hooks / hook).chmod(0o755)
    with open(repo / ".git" / "config", "a") as config:
        config.write(
            f"[core]\n\tfsmonitor = {script}\n\tsshCommand = {script}\n\tpager = {script}\n"
            f"\teditor = {script}\n\thooksPath = {hooks}\n"
            f"[filter \"evil\"]\n\tclean = {script}\n\tsmudge = {script}\n\tprocess = {script}\n\trequired = true\n"
            f"[diff \"evil\"]\n\ttextconv = {script}\n\tcommand = {script}\n"
            f"[diff]\n\texternal = {script}\n"
            f"[commit]\n\tgpgSign = true\n[gpg]\n\tprogram = {script}\n"
            f"[alias]\n\tstatus = !{script}\n"
        )
    (repo / ".gitattributes").write_text("* filter=evil diff=evil\n")
    (repo / "a.txt").write_text("hello\n")
    return repo


def test_hostile_repo_config_runs_nothing(app, ws, tmp_path):
    marker = tmp_path / "pwned"
    _hostile_repo(ws, marker)
    ok(app, "git.status", path="evil")
    ok(app, "git.add", path="evil")
    ok(app, "git.commit", path="evil", message="c1")
    (ws / "evil" / "a.txt").write_text("changed\n")
    ok(app, "git.diff", path="evil")
    ok(app, "git.commit", path="evil", message="c2", all=True)
    ok(app, "git.log", path="evil")
    ok(app, "git.show", path="evil")
    ok(app, "git.branch", path="evil", name="side")
    ok(app, "git.checkout", path="evil", ref="side")
    assert not marker.exists(), "a program named in the repository's config or hooks was run"
    # The same repo does run the payload with a plain git: the test's repo really is hostile.
    subprocess.run(["git", "status"], cwd=ws / "evil", capture_output=True, env={**os.environ, "HOME": str(tmp_path)})
    assert marker.exists()
