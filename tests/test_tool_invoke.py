"""tool_invoke: name resolution, validation, the policy gate, approvals, masking, truncation, records;
plus the per-app index and the meta-tools built on it."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from django.utils import timezone

from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from apps_registry.manifest.compiled import AgentSpec, Capabilities, CapabilityRule, CompiledApp, Runtime
from digitorn_site.errors import NotFoundError, ValidationError
from tooling.meta import meta_tool_invoke
from tooling.models import ToolExecution
from tooling.selectors import meta_tools, tool_index_for, tools_for_agent
from tooling.services import tool_invoke, unseal_secrets

pytestmark = pytest.mark.django_db

SECRET = "sk-live-0123456789abcdef"


def make_app(ws, capabilities: Capabilities | None = None, **kw) -> CompiledApp:
    return CompiledApp(
        app_id="inv",
        name="Invoke",
        modules={"filesystem": {"workspace": str(ws)}, "shell": {}, "memory": {}},
        agents=(AgentSpec(id="main"), AgentSpec(id="reader", modules=("filesystem",))),
        capabilities=capabilities,
        **kw,
    )


GATED = Capabilities(
    default_policy="auto",
    grant=(CapabilityRule(module="filesystem"),),
    approve=(CapabilityRule(module="shell", reason="commands change the machine"),),
    deny=(CapabilityRule(module="filesystem", actions=("delete",)),),
)


def call(app, tool, params=None, **kw):
    kw.setdefault("caller", "agent:main")
    kw.setdefault("principal", "alice")
    return tool_invoke(app=app, tool_name=tool, params=params if params is not None else {}, **kw)


# -- resolution and validation -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["filesystem.read", "filesystem__read", "filesystem.cat", "read_file", "read"])
def test_names_resolve_to_the_canonical_tool(tmp_path, name):
    (tmp_path / "a.txt").write_text("hello")
    outcome = call(make_app(tmp_path), name, {"path": "a.txt"})
    assert outcome.tool == "filesystem.read" and outcome.data["content"] == "hello"


def test_unknown_tool_suggests_the_closest_name(tmp_path):
    with pytest.raises(NotFoundError, match="Did you mean 'filesystem.read'"):
        call(make_app(tmp_path), "filesystem.raed", {"path": "a"})
    with pytest.raises(NotFoundError, match="no tool 'database.query'"):
        call(make_app(tmp_path), "database.query", {"sql": "select 1"})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "params.path: 'path' is a required property"),
        ({"path": 3}, "params.path: 3 is not of type 'string'"),
        ({"path": "a", "offset": -1}, "params.offset: -1 is less than the minimum of 0"),
        ({"path": "a", "bogus": 1}, "params.bogus: Additional properties are not allowed"),
        ([1, 2], "params: must be an object"),
    ],
)
def test_invalid_params_raise_a_validation_error_naming_the_field(tmp_path, params, message):
    with pytest.raises(ValidationError) as info:
        call(make_app(tmp_path), "filesystem.read", params)
    assert info.value.message.startswith(message)
    assert not ToolExecution.objects.exists()


# -- the gate ------------------------------------------------------------------------------------


def test_blocked_tool_does_not_run_and_is_recorded(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    outcome = call(make_app(tmp_path, GATED), "filesystem.delete", {"path": "keep.txt"})
    assert (outcome.status, outcome.success) == ("blocked", False)
    assert "blocked by policy" in outcome.error
    assert (tmp_path / "keep.txt").exists()
    row = ToolExecution.objects.get()
    assert (row.tool, row.outcome, row.caller, row.principal) == ("filesystem.delete", "blocked", "agent:main", "alice")


def test_agent_module_list_blocks_other_modules(tmp_path):
    outcome = call(make_app(tmp_path), "shell.run", {"command": "touch ran"}, agent_id="reader")
    assert outcome.status == "blocked" and "reader" in outcome.error
    assert not (tmp_path / "ran").exists()


def test_approve_creates_a_request_and_runs_only_once_approved(tmp_path):
    app = replace(make_app(tmp_path, GATED), secret_values=(SECRET,))
    pending = call(
        app, "shell.run", {"command": f"echo {SECRET} > out.txt"}, session_id="s1", agent_id="main", origin_ref="call-1"
    )
    assert pending.status == "pending_approval" and pending.request_id.startswith("req-")
    assert not (tmp_path / "out.txt").exists()
    request = ApprovalRequest.objects.get(request_id=pending.request_id)
    assert request.params == {"command": "echo *** > out.txt"}
    # What runs once approved is stored sealed: no plaintext at rest (issue #10, item 2).
    assert SECRET not in json.dumps(request.call_params)
    assert unseal_secrets(request.call_params, (SECRET,)) == {"command": f"echo {SECRET} > out.txt"}
    assert (request.tool_name, request.reason, request.risk_level) == ("shell.run", "commands change the machine", "high")
    assert (request.session_id, request.agent_id, request.origin_ref, request.principal) == ("s1", "main", "call-1", "alice")
    assert request.expires_at > timezone.now() + timedelta(seconds=290)

    # Still pending: the same id answers pending, no new request.
    again = call(app, "shell.run", {"command": "x"}, approval_request_id=pending.request_id)
    assert again.status == "pending_approval" and ApprovalRequest.objects.count() == 1

    approval_decide(app_id="inv", request_id=pending.request_id, approved=True, message="", principal="alice")
    ran = call(app, "shell.run", {"command": "echo different"}, approval_request_id=pending.request_id)
    assert ran.status == "ok" and ran.request_id == pending.request_id
    # What ran is what was approved, and the secret it wrote is masked in the result.
    assert (tmp_path / "out.txt").read_text() == f"{SECRET}\n"
    assert ran.data["command"] == "echo *** > out.txt"


def test_denied_and_expired_requests_answer_denied(tmp_path):
    app = make_app(tmp_path, GATED)
    first = call(app, "shell.run", {"command": "touch a"})
    approval_decide(app_id="inv", request_id=first.request_id, approved=False, message="not today", principal="alice")
    denied = call(app, "shell.run", {"command": "touch a"}, approval_request_id=first.request_id)
    assert (denied.status, denied.error) == ("denied", "denied: not today")

    second = call(app, "shell.run", {"command": "touch b"})
    ApprovalRequest.objects.filter(request_id=second.request_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = call(app, "shell.run", {"command": "touch b"}, approval_request_id=second.request_id)
    assert expired.status == "denied" and expired.error.startswith("denied: expired")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert list(ToolExecution.objects.order_by("id").values_list("outcome", flat=True)) == [
        "pending_approval",
        "denied",
        "pending_approval",
        "denied",
    ]


def test_a_request_for_another_tool_is_not_accepted(tmp_path):
    app = make_app(tmp_path, GATED)
    pending = call(app, "shell.run", {"command": "true"})
    with pytest.raises(NotFoundError, match="approval_request_id"):
        call(app, "shell.run", {"command": "true"}, approval_request_id="req-nope")
    other = replace(app, app_id="other-app")
    with pytest.raises(NotFoundError):
        call(other, "shell.run", {"command": "true"}, approval_request_id=pending.request_id)


# -- masking and truncation ----------------------------------------------------------------------


def test_secret_values_are_masked_in_data_and_errors(tmp_path):
    app = replace(make_app(tmp_path), secret_values=(SECRET, "short"))
    (tmp_path / "creds.txt").write_text(f"token={SECRET}\nname=short\n")
    outcome = call(app, "filesystem.read", {"path": "creds.txt"})
    assert SECRET not in str(outcome.data) and "token=***" in outcome.data["content"]
    assert "name=***" in outcome.data["content"]
    failed = call(app, "shell.run", {"command": f"echo {SECRET} >&2; exit 1"})
    assert failed.status == "error" and SECRET not in failed.error and "***" in failed.error
    assert SECRET not in str(failed.data)
    assert not ToolExecution.objects.filter(error__contains=SECRET).exists()


def test_oversized_results_are_truncated_with_a_marker(tmp_path):
    app = make_app(tmp_path, runtime=Runtime(max_tool_result_chars=300))
    (tmp_path / "big.txt").write_text("q" * 5000)
    outcome = call(app, "filesystem.read", {"path": "big.txt"})
    assert isinstance(outcome.data, str) and len(outcome.data) < 400
    assert "[truncated: 300 of" in outcome.data and outcome.data.startswith('{"path": "big.txt"')
    small = call(app, "filesystem.stat", {"path": "big.txt"})
    assert isinstance(small.data, dict)


# -- index and meta-tools ------------------------------------------------------------------------


def test_index_hides_blocked_tools_everywhere(tmp_path):
    index = tool_index_for(make_app(tmp_path, GATED))
    names = {t.name for t in index.tools}
    assert "filesystem.delete" not in names and {"filesystem.read", "shell.run"} <= names
    assert index.total_tools == len(names) and index.total_categories == 3
    assert all(tool.name != "filesystem.delete" for tool, _ in index.search("delete remove a file", 50))
    assert "filesystem.delete" not in str(index.to_dict())
    with pytest.raises(NotFoundError, match="blocked"):
        index.get("filesystem.delete")
    # A module whose every tool is blocked is not a category.
    only_fs = replace(
        make_app(tmp_path),
        capabilities=Capabilities(default_policy="auto", deny=(CapabilityRule(module="shell"),)),
    )
    assert "shell" not in tool_index_for(only_fs).categories


def test_index_is_cached_per_compiled_app(tmp_path):
    app = make_app(tmp_path)
    assert tool_index_for(app) is tool_index_for(replace(app))
    assert tool_index_for(app) is not tool_index_for(make_app(tmp_path, GATED))


def test_tools_for_agent_respects_its_modules_list(tmp_path):
    app = make_app(tmp_path, GATED)
    reader = {t["name"] for t in tools_for_agent(app, "reader")}
    assert reader and all(name.startswith("filesystem.") for name in reader)
    assert "filesystem.delete" not in reader
    main = {t["name"] for t in tools_for_agent(app, "main")}
    assert "shell.run" in main and "memory.remember" in main
    first = tools_for_agent(app, "main")[0]
    assert set(first) == {"name", "description", "parameters", "risk_level"}


def test_meta_tools(tmp_path):
    (tmp_path / "n.txt").write_text("meta")
    app = make_app(tmp_path, GATED)
    assert [m["name"] for m in meta_tools()] == [
        "search_tools",
        "get_tool",
        "execute_tool",
        "run_parallel",
        "list_categories",
        "browse_category",
    ]

    def meta(name, params, agent="reader"):
        return meta_tool_invoke(app=app, name=name, params=params, caller="agent:x", principal="alice", agent_id=agent)

    found = meta("search_tools", {"query": "run a shell command"})
    assert found.success and all(t["name"].startswith("filesystem.") for t in found.data["tools"])
    assert meta("search_tools", {"query": "run a shell command"}, agent="main").data["tools"][0]["name"] == "shell.run"
    assert meta("get_tool", {"name": "filesystem.read"}).data["parameters"]["required"] == ["path"]
    assert not meta("get_tool", {"name": "shell.run"}).success
    cats = meta("list_categories", {}).data
    assert [c["name"] for c in cats["categories"]] == ["filesystem"]
    page = meta("browse_category", {"category": "filesystem"}).data
    assert page["total_pages"] == 1 and "filesystem.delete" not in [t["name"] for t in page["tools"]]
    assert not meta("browse_category", {"category": "shell"}).success
    ran = meta("execute_tool", {"name": "filesystem.read", "params": {"path": "n.txt"}})
    assert ran.status == "ok" and ran.data["content"] == "meta"
    blocked = meta("execute_tool", {"name": "shell.run", "params": {"command": "true"}})
    assert blocked.status == "blocked"
    unknown = meta("execute_tool", {"name": "nope.nothing"})
    assert unknown.status == "error" and "no tool" in unknown.error
    bad = meta("search_tools", {"query": ""})
    assert bad.status == "error" and "params.query" in bad.error


def test_meta_execute_tool_goes_through_approval_and_resumes(tmp_path):
    app = make_app(tmp_path, GATED)

    def execute(**kw):
        return meta_tool_invoke(
            app=app,
            name="execute_tool",
            params={"name": "shell.run", "params": {"command": "touch m"}},
            caller="agent:main",
            principal="alice",
            agent_id="main",
            **kw,
        )

    pending = execute(origin_ref="call-7")
    assert pending.status == "pending_approval" and not (tmp_path / "m").exists()
    assert ApprovalRequest.objects.get(request_id=pending.request_id).origin_ref == "call-7"
    approval_decide(app_id="inv", request_id=pending.request_id, approved=True, message="", principal="alice")
    ran = execute(approval_request_id=pending.request_id)
    assert ran.status == "ok" and (tmp_path / "m").exists()
    assert ApprovalRequest.objects.count() == 1
