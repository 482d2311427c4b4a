"""filesystem: the attacks of issue #10 items 4 and 5 and the catalog names of #11, for real.

A thread flips a workspace entry between a file and a symlink pointing out while the module reads
and writes it; hard links and FIFOs planted in the workspace; a catastrophic-backtracking pattern.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from apps_registry.manifest.compiled import CompiledApp
from digitorn_site.errors import ValidationError
from tooling.modules.base import ToolContext, ToolError
from tooling.modules.filesystem import FilesystemModule
from tooling.services import tool_invoke

pytestmark = pytest.mark.django_db

SECRET = "secret-key-of-the-daemon-91c2"
ROUNDS = 600


@pytest.fixture
def layout(tmp_path, settings):
    ws = tmp_path / "ws"
    ws.mkdir()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "django-secret.key").write_text(SECRET)
    settings.DATA_DIR = data_dir
    return ws, data_dir


def module(ws: Path) -> FilesystemModule:
    return FilesystemModule(config={"workspace": str(ws)}, context=ToolContext(app_id="race"))


class Flipper(threading.Thread):
    """Swaps ``ws/name`` between two prepared entries with atomic renames until stopped."""

    def __init__(self, ws: Path, name: str, make_a, make_b):
        super().__init__(daemon=True)
        self.ws, self.name, self.make = ws, name, (make_a, make_b)
        self.stop = threading.Event()

    def run(self):
        i = 0
        while not self.stop.is_set():
            tmp = self.ws / f".{self.name}.tmp"
            self.make[i % 2](tmp)
            os.replace(tmp, self.ws / self.name)
            i += 1


def _file(content):
    return lambda p: p.write_text(content)


def _link(target):
    return lambda p: os.symlink(target, p)


def _dir_with(content):
    def make(p):
        p.mkdir()
        (p / "django-secret.key").write_text(content)

    return make


def _attempts(fs, action, params):
    results = []
    for _ in range(ROUNDS):
        try:
            results.append(fs.invoke_action(action, dict(params)))
        except ToolError as exc:
            results.append(exc.message)
    return results


def test_reads_racing_a_symlink_flip_never_leave_the_workspace(layout):
    ws, data_dir = layout
    flipper = Flipper(ws, "flip", _file("inside"), _link(data_dir / "django-secret.key"))
    flipper.start()
    try:
        results = _attempts(module(ws), "read", {"path": "flip"})
    finally:
        flipper.stop.set()
        flipper.join()
    assert not any(SECRET in str(r) for r in results)
    assert any(isinstance(r, dict) and r["content"] == "inside" for r in results)


def test_a_folder_flipped_to_a_link_mid_path_never_leaves_the_workspace(layout):
    ws, data_dir = layout
    (data_dir / "sub").mkdir()
    (data_dir / "sub" / "django-secret.key").write_text(SECRET)
    # Renaming over a non-empty folder is not possible: flip between a link in and a link out.
    (ws / "real").mkdir()
    (ws / "real" / "django-secret.key").write_text("inside")
    flipper = Flipper(ws, "d", _link("real"), _link(data_dir))
    flipper.start()
    try:
        results = _attempts(module(ws), "read", {"path": "d/django-secret.key"})
    finally:
        flipper.stop.set()
        flipper.join()
    assert not any(SECRET in str(r) for r in results)


def test_writes_racing_a_symlink_flip_never_change_a_file_outside(layout):
    ws, data_dir = layout
    victim = data_dir / "django-secret.key"
    flipper = Flipper(ws, "flip", _file("inside"), _link(victim))
    flipper.start()
    try:
        _attempts(module(ws), "write", {"path": "flip", "content": "overwritten"})
        _attempts(module(ws), "edit", {"path": "flip", "old_string": "e", "new_string": "E"})
    finally:
        flipper.stop.set()
        flipper.join()
    assert victim.read_text() == SECRET


def test_a_planted_hard_link_is_neither_read_nor_written(layout):
    ws, data_dir = layout
    victim = data_dir / "django-secret.key"
    os.link(victim, ws / "hard")
    fs = module(ws)
    for action, params in [
        ("read", {"path": "hard"}),
        ("write", {"path": "hard", "content": "x"}),
        ("write", {"path": "hard", "content": "x", "append": True}),
        ("edit", {"path": "hard", "old_string": "secret", "new_string": "x"}),
        ("copy", {"source": "hard", "destination": "stolen.txt"}),
    ]:
        with pytest.raises(ToolError, match="hard links"):
            fs.invoke_action(action, params)
    assert fs.invoke_action("grep", {"pattern": "secret"})["count"] == 0
    assert victim.read_text() == SECRET and not (ws / "stolen.txt").exists()


def test_a_fifo_is_refused_instead_of_hanging(layout):
    ws, _ = layout
    os.mkfifo(ws / "pipe")
    with pytest.raises(ToolError, match="not a regular file"):
        module(ws).invoke_action("read", {"path": "pipe"})
    assert module(ws).invoke_action("grep", {"pattern": "x"})["count"] == 0


@pytest.mark.timeout(60)
def test_grep_runs_catastrophic_patterns_in_linear_time(layout):
    ws, _ = layout
    (ws / "a.txt").write_text("a" * 100_000 + "b\n")
    fs = module(ws)
    for _ in range(4):
        assert fs.invoke_action("grep", {"pattern": "(a+)+$"})["count"] == 0
    assert fs.invoke_action("grep", {"pattern": "(x+x+)+y|b$"})["count"] == 1
    with pytest.raises(ToolError, match="RE2"):
        fs.invoke_action("grep", {"pattern": r"(a)\1"})


# -- catalog names of the original ------------------------------------------------------------


def test_original_names_file_path_glob_and_shell_bash(layout):
    ws, _ = layout
    app = CompiledApp(app_id="names", name="Names", modules={"filesystem": {"workspace": str(ws)},
                                                           "shell": {"workspace": str(ws)}})

    def call(tool, **params):
        return tool_invoke(app=app, tool_name=tool, params=params, caller="t", principal="t")

    assert call("filesystem.write", file_path="a.py", content="x = 1\n").status == "ok"
    assert call("filesystem.read", file_path="a.py").data["content"] == "x = 1\n"
    assert call("filesystem.edit", file_path="a.py", old_string="1", new_string="2").status == "ok"
    assert call("filesystem.glob", pattern="*.py", path=".").data["files"] == ["a.py"]
    assert call("filesystem.grep", pattern="x = 2", include="*.py").data["count"] == 1
    with pytest.raises(ValidationError, match="file_path"):
        call("filesystem.read", file_path="a.py", path="a.py")
    ran = call("shell.bash", command="cat a.py", description="show the file", timeout_seconds=5)
    assert ran.status == "ok" and ran.tool == "shell.run" and ran.data["stdout"] == "x = 2\n"


@pytest.mark.parametrize("workspace", ["/", "/etc", "/usr/lib", "/proc/self"])
def test_a_system_folder_is_refused_as_a_workspace(workspace):
    app = CompiledApp(app_id="sys", name="Sys", modules={"filesystem": {"workspace": workspace}, "shell": {}})
    for tool, params in [("filesystem.ls", {}), ("filesystem.read", {"path": "passwd"}), ("shell.run", {"command": "id"})]:
        outcome = tool_invoke(app=app, tool_name=tool, params=params, caller="t", principal="t")
        assert outcome.status == "error" and "system folder" in outcome.error, (tool, outcome.error)
