"""Every built-in module's actions, run through tool_invoke on real files, SQLite, processes and HTTP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from apps_registry.manifest.compiled import AgentSpec, CompiledApp, Runtime
from tests.httpkit import QuietHandler, serving
from tooling import registry
from tooling.models import MemoryEntry, ToolExecution
from tooling.modules.base import SIDE_EFFECTS, ActionSpec, Module, ToolContext, action
from tooling.services import tool_invoke

pytestmark = pytest.mark.django_db


def make_app(workspace: Path, **modules: dict) -> CompiledApp:
    config = {
        "filesystem": {"workspace": str(workspace)},
        "shell": {},
        "database": {},
        "http": {"allowed_hosts": ["127.0.0.1"]},
        "memory": {},
    }
    config.update(modules)
    return CompiledApp(
        app_id="modtest",
        name="Module test",
        modules=config,
        agents=(AgentSpec(id="assistant"),),
        runtime=Runtime(max_tool_result_chars=200_000),
    )


@pytest.fixture
def app(ws) -> CompiledApp:
    return make_app(ws)


def call(app: CompiledApp, tool: str, session_id: str | None = None, **params):
    return tool_invoke(app=app, tool_name=tool, params=params, caller="test", principal="tester", session_id=session_id)


def ok(app: CompiledApp, tool: str, **params):
    outcome = call(app, tool, **params)
    assert outcome.status == "ok", outcome.error
    return outcome.data


# -- framework ---------------------------------------------------------------------------------


def test_registry_lists_builtin_modules_with_actions_and_schemas():
    actions = registry.known_actions()
    assert set(actions) >= {"filesystem", "shell", "database", "http", "memory"}
    assert {"read", "write", "edit", "ls", "find", "grep", "mkdir", "move", "copy", "delete", "stat"} <= set(
        actions["filesystem"]
    )
    assert actions["shell"] == ["run"]
    assert set(actions["database"]) == {"query", "execute", "list_tables", "describe"}
    assert set(actions["http"]) == {"get", "post", "request"}
    assert set(actions["memory"]) == {"remember", "recall", "forget", "set_goal", "task_create", "task_update"}
    assert "workspace" in registry.module_config_schema("filesystem")["properties"]
    for cls in registry.all_modules().values():
        for spec in cls.actions.values():
            assert spec.parameters["type"] == "object"
            assert spec.risk_level in ("low", "medium", "high")
            assert set(spec.side_effects) <= set(SIDE_EFFECTS)
    assert registry.action_spec("shell", "run").risk_level == "high"
    assert registry.action_spec("database", "execute").risk_level == "high"


def test_action_spec_refuses_unknown_side_effect_and_risk():
    with pytest.raises(ValueError, match="side effects"):
        ActionSpec(name="x", description="", parameters={}, side_effects=("teleport",))
    with pytest.raises(ValueError, match="risk_level"):
        ActionSpec(name="x", description="", parameters={}, risk_level="extreme")


def test_a_module_subclass_collects_its_decorated_actions():
    class Echo(Module):
        id = "echo_test"

        @action(description="say it back", parameters={"properties": {"text": {"type": "string"}}})
        def say(self, text: str = "") -> str:
            return text.upper()

    assert list(Echo.actions) == ["say"]
    assert Echo.actions["say"].parameters["additionalProperties"] is False
    assert Echo(config={}, context=ToolContext(app_id="x")).invoke_action("say", {"text": "hi"}) == "HI"


# -- filesystem --------------------------------------------------------------------------------


def test_filesystem_write_read_edit_stat(app, ws):
    assert ok(app, "filesystem.write", path="notes/a.txt", content="one\ntwo\nthree\n")["bytes_written"] == 14
    assert (ws / "notes" / "a.txt").read_text() == "one\ntwo\nthree\n"
    data = ok(app, "filesystem.read", path="notes/a.txt")
    assert data["content"] == "one\ntwo\nthree\n" and data["total_lines"] == 3
    window = ok(app, "filesystem.read", path="notes/a.txt", offset=1, limit=1)
    assert window["content"] == "two\n" and window["lines"] == 1
    ok(app, "filesystem.write", path="notes/a.txt", content="four\n", append=True)
    assert (ws / "notes" / "a.txt").read_text().endswith("three\nfour\n")
    assert ok(app, "filesystem.edit", path="notes/a.txt", old_string="two", new_string="2")["replacements"] == 1
    assert "2\n" in (ws / "notes" / "a.txt").read_text()
    stat = ok(app, "filesystem.stat", path="notes/a.txt")
    assert stat["type"] == "file" and stat["size"] == len((ws / "notes" / "a.txt").read_bytes())
    # Absolute paths inside the workspace are accepted (the reference's example uses one).
    assert ok(app, "filesystem.read", path=str(ws / "notes" / "a.txt"))["path"] == "notes/a.txt"


def test_filesystem_edit_refuses_ambiguous_and_missing_strings(app, ws):
    (ws / "f.txt").write_text("x x x")
    ambiguous = call(app, "filesystem.edit", path="f.txt", old_string="x", new_string="y")
    assert ambiguous.status == "error" and "occurs 3 times" in ambiguous.error
    assert ok(app, "filesystem.edit", path="f.txt", old_string="x", new_string="y", replace_all=True)["replacements"] == 3
    assert (ws / "f.txt").read_text() == "y y y"
    missing = call(app, "filesystem.edit", path="f.txt", old_string="zzz", new_string="y")
    assert missing.status == "error" and "params.old_string" in missing.error


def test_filesystem_ls_lists_one_folder(app, ws):
    (ws / "src").mkdir()
    (ws / "src" / "deep").mkdir()
    (ws / "src" / "deep" / "x.py").write_text("")
    (ws / "README.md").write_text("hi")
    data = ok(app, "filesystem.ls", path=".")
    assert [(e["name"], e["type"]) for e in data["entries"]] == [("src", "dir"), ("README.md", "file")]
    assert [e["name"] for e in ok(app, "filesystem.ls", path="src")["entries"]] == ["deep"]
    not_folder = call(app, "filesystem.ls", path="README.md")
    assert not_folder.status == "error" and "not a folder" in not_folder.error


def test_filesystem_find_is_recursive_by_name_and_supports_double_star(app, ws):
    for rel in ("a.py", "src/b.py", "src/deep/c.py", "src/deep/d.txt", "tests/test_e.py"):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text("")
    assert ok(app, "filesystem.find", pattern="*.py", path=".")["files"] == [
        "a.py",
        "src/b.py",
        "src/deep/c.py",
        "tests/test_e.py",
    ]
    assert ok(app, "filesystem.find", pattern="*.py", path="src")["files"] == ["src/b.py", "src/deep/c.py"]
    assert ok(app, "filesystem.find", pattern="src/**/*.py")["files"] == ["src/b.py", "src/deep/c.py"]
    assert ok(app, "filesystem.find", pattern="**/test_*.py")["files"] == ["tests/test_e.py"]
    limited = ok(app, "filesystem.find", pattern="*", max_results=2)
    assert limited["count"] == 2 and limited["truncated"] is True


def test_filesystem_grep_mkdir_copy_move_delete(app, ws):
    (ws / "src").mkdir()
    (ws / "src" / "m.py").write_text("import os\nTODO_MARK = 1\n")
    (ws / "n.txt").write_text("todo_mark lower\n")
    hits = ok(app, "filesystem.grep", pattern="todo_mark", ignore_case=True)
    assert {(m["path"], m["line"]) for m in hits["matches"]} == {("src/m.py", 2), ("n.txt", 1)}
    assert ok(app, "filesystem.grep", pattern="TODO", glob="*.py")["count"] == 1
    bad = call(app, "filesystem.grep", pattern="(")
    assert bad.status == "error" and "regular expression" in bad.error

    ok(app, "filesystem.mkdir", path="out/nested")
    assert (ws / "out" / "nested").is_dir()
    ok(app, "filesystem.copy", source="src", destination="out/src-copy")
    assert (ws / "out" / "src-copy" / "m.py").read_text().startswith("import os")
    clash = call(app, "filesystem.copy", source="n.txt", destination="src/m.py")
    assert clash.status == "error" and "overwrite" in clash.error
    ok(app, "filesystem.move", source="n.txt", destination="out/n2.txt")
    assert not (ws / "n.txt").exists() and (ws / "out" / "n2.txt").exists()

    non_empty = call(app, "filesystem.delete", path="out")
    assert non_empty.status == "error" and "recursive" in non_empty.error
    ok(app, "filesystem.delete", path="out/n2.txt")
    assert not (ws / "out" / "n2.txt").exists()
    ok(app, "filesystem.delete", path="out", recursive=True)
    assert not (ws / "out").exists()


def test_filesystem_max_file_bytes(ws):
    app = make_app(ws, filesystem={"workspace": str(ws), "max_file_bytes": 10})
    too_big = call(app, "filesystem.write", path="big.txt", content="x" * 11)
    assert too_big.status == "error" and "max_file_bytes" in too_big.error
    (ws / "big.txt").write_text("y" * 50)
    data = ok(app, "filesystem.read", path="big.txt")
    assert data["content"] == "y" * 10 and data["truncated"] is True


def test_filesystem_default_workspace_is_the_apps_folder_in_the_data_dir(settings):
    app = CompiledApp(app_id="nows", name="x", modules={"filesystem": {}})
    ok(app, "filesystem.write", path="hello.txt", content="hi")
    assert (Path(settings.DATA_DIR) / "workspaces" / "nows" / "hello.txt").read_text() == "hi"


# -- shell -------------------------------------------------------------------------------------


def test_shell_runs_in_workspace_with_clean_environment(app, ws, monkeypatch):
    monkeypatch.setenv("DIGITORN_API_KEY", "must-not-leak")
    (ws / "sub").mkdir()
    data = ok(app, "shell.run", command="pwd; echo out; echo err >&2; echo ${DIGITORN_API_KEY:-unset}")
    assert data["stdout"].splitlines() == [os.path.realpath(ws), "out", "unset"]
    assert data["stderr"] == "err\n" and data["exit_code"] == 0
    assert ok(app, "shell.run", command="pwd", cwd="sub")["stdout"].strip() == os.path.realpath(ws / "sub")
    ok(app, "shell.run", command="echo made > file.txt")
    assert (ws / "file.txt").read_text() == "made\n"


def test_shell_nonzero_exit_is_a_tool_error_with_output(app):
    outcome = call(app, "shell.run", command="echo partial; exit 3")
    assert outcome.status == "error" and "exited with code 3" in outcome.error
    assert outcome.data["exit_code"] == 3 and outcome.data["stdout"] == "partial\n"


def test_shell_allowed_and_blocked_command_lists(ws):
    app = make_app(ws, shell={"allowed_commands": ["echo", "ls"], "blocked_commands": ["rm"]})
    assert ok(app, "shell.run", command="echo a && ls")["exit_code"] == 0
    for command, needle in [
        ("cat /etc/passwd", "'cat' is not in"),
        ("echo a; rm -rf x", "'rm' is in"),
        ("echo a | /bin/cat", "'cat' is not in"),
        ("echo $(id)", "'id' is not in"),
        ("FOO=1 python3 -c 1", "'python3' is not in"),
    ]:
        outcome = call(app, "shell.run", command=command)
        assert outcome.status == "error" and needle in outcome.error, (command, outcome.error)


# -- database ----------------------------------------------------------------------------------


def test_database_execute_query_list_describe(app, ws):
    ok(app, "database.execute", sql="CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    inserted = ok(app, "database.execute", sql="INSERT INTO users (name) VALUES (?)", params=["ada"])
    assert inserted == {"rows_affected": 1, "last_row_id": 1}
    ok(app, "database.execute", sql="INSERT INTO users (name) VALUES ('bob'); INSERT INTO users (name) VALUES ('cy');", script=True)
    assert (ws / "database.sqlite3").is_file()
    data = ok(app, "database.query", sql="SELECT count(*) FROM users")
    assert data["columns"] == ["count(*)"] and data["rows"] == [[3]]
    limited = ok(app, "database.query", sql="SELECT name FROM users ORDER BY id", limit=2)
    assert limited["rows"] == [["ada"], ["bob"]] and limited["truncated"] is True
    assert ok(app, "database.list_tables")["tables"] == [{"name": "users", "type": "table"}]
    described = ok(app, "database.describe", table="users")
    assert [c["name"] for c in described["columns"]] == ["id", "name"]
    assert described["columns"][0]["primary_key"] is True and described["row_count"] == 3
    missing = call(app, "database.describe", table="nope")
    assert missing.status == "error" and "users" in missing.error


def test_database_query_is_read_only_and_attach_is_refused(app, ws, tmp_path):
    ok(app, "database.execute", sql="CREATE TABLE t (x)")
    for sql in ("INSERT INTO t VALUES (1)", "DELETE FROM t", "DROP TABLE t", "CREATE TABLE u (y)"):
        outcome = call(app, "database.query", sql=sql)
        assert outcome.status == "error" and "params.sql" in outcome.error, sql
    assert ok(app, "database.query", sql="SELECT count(*) FROM t")["rows"] == [[0]]
    other = tmp_path / "other.db"
    for tool in ("database.query", "database.execute"):
        outcome = call(app, tool, sql=f"ATTACH DATABASE '{other}' AS o")
        assert outcome.status == "error" and "ATTACH" in outcome.error
    assert not other.exists()


def test_database_url_config_and_daemon_database_refused(ws, settings):
    app = make_app(ws, database={"url": "sqlite:///data/app.db"})
    ok(app, "database.execute", sql="CREATE TABLE t (x)")
    assert (ws / "data" / "app.db").is_file()
    daemon_db = make_app(ws, database={"url": f"sqlite:///{settings.DATA_DIR}/digitorn.sqlite3"})
    outcome = call(daemon_db, "database.list_tables")
    assert outcome.status == "error" and "data dir" in outcome.error
    pg = make_app(ws, database={"url": "postgresql://x/y"})
    outcome = call(pg, "database.list_tables")
    assert outcome.status == "error" and "not supported" in outcome.error


# -- http --------------------------------------------------------------------------------------


class _Handler(QuietHandler):

    def do_GET(self):
        if self.path.startswith("/json"):
            self._send(200, json.dumps({"ok": True, "path": self.path, "host": self.headers["Host"]}).encode())
        elif self.path == "/big":
            self._send(200, b"z" * 5000, "text/plain")
        elif self.path == "/redirect":
            self._send(302, b"", headers={"Location": "/json?from=redirect"})
        elif self.path == "/redirect-private":
            self._send(302, b"", headers={"Location": "http://10.1.2.3/secret"})
        else:
            self._send(404, b'{"error": "nope"}')

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        self._send(201, json.dumps({"received": body, "ctype": self.headers.get("Content-Type")}).encode())

    def do_DELETE(self):
        self._send(204, b"")


@pytest.fixture(scope="module")
def http_server():
    with serving(_Handler) as url:
        yield url


def test_http_get_post_request_against_a_local_server(app, http_server):
    data = ok(app, "http.get", url=f"{http_server}/json", params={"q": "1"})
    assert data["status_code"] == 200 and data["json"]["path"] == "/json?q=1"
    assert data["json"]["host"] == http_server.removeprefix("http://")
    posted = ok(app, "http.post", url=f"{http_server}/echo", json={"a": 1})
    assert posted["status_code"] == 201
    assert json.loads(posted["json"]["received"]) == {"a": 1} and posted["json"]["ctype"] == "application/json"
    text = ok(app, "http.post", url=f"{http_server}/echo", body="plain")
    assert text["json"]["received"] == "plain"
    deleted = ok(app, "http.request", method="DELETE", url=f"{http_server}/thing")
    assert deleted["status_code"] == 204
    missing = ok(app, "http.get", url=f"{http_server}/missing")
    assert missing["status_code"] == 404


def test_http_follows_redirects_and_caps_the_body(ws, http_server):
    app = make_app(ws, http={"allowed_hosts": ["127.0.0.1"], "max_response_bytes": 100})
    redirected = ok(app, "http.get", url=f"{http_server}/redirect")
    assert redirected["status_code"] == 200 and redirected["url"].endswith("/json?from=redirect")
    big = ok(app, "http.get", url=f"{http_server}/big")
    assert big["body"] == "z" * 100 and big["truncated"] is True
    # A redirect to a private address is checked like the first hop.
    hop = call(app, "http.get", url=f"{http_server}/redirect-private")
    assert hop.status == "error" and "10.1.2.3" in hop.error


def test_http_refuses_other_schemes(app):
    outcome = call(app, "http.get", url="file:///etc/passwd")
    assert outcome.status == "error" and "scheme" in outcome.error


# -- memory ------------------------------------------------------------------------------------


def test_memory_is_per_session(app):
    assert ok_s(app, "s1", "memory.remember", key="color", value="blue")["replaced"] is False
    assert ok_s(app, "s1", "memory.remember", key="color", value="green")["replaced"] is True
    ok_s(app, "s1", "memory.remember", key="pet", value="cat named Blue")
    assert ok_s(app, "s1", "memory.recall", key="color")["value"] == "green"
    assert [m["key"] for m in ok_s(app, "s1", "memory.recall", query="blue")["memories"]] == ["pet"]
    assert ok_s(app, "s2", "memory.recall")["count"] == 0
    other = call(app, "memory.recall", session_id="s2", key="color")
    assert other.status == "error" and "nothing remembered" in other.error
    assert ok_s(app, "s1", "memory.forget", key="color")["forgotten"] == 1
    assert MemoryEntry.objects.filter(app_id="modtest", session_id="s1").count() == 1
    assert ok_s(app, "s1", "memory.forget", all=True)["forgotten"] == 1
    assert not MemoryEntry.objects.exists()


def ok_s(app, session_id, tool, **params):
    outcome = call(app, tool, session_id=session_id, **params)
    assert outcome.status == "ok", outcome.error
    return outcome.data


def test_every_call_is_recorded(app):
    ok(app, "filesystem.ls")
    call(app, "filesystem.read", path="nope.txt")
    rows = list(ToolExecution.objects.order_by("id").values_list("tool", "outcome", "caller", "principal"))
    assert rows == [("filesystem.ls", "ok", "test", "tester"), ("filesystem.read", "error", "test", "tester")]
