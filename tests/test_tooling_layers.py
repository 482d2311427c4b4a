"""Issue #12 items 2, 4 and 6 on tooling's and approvals' side: the import direction, one wiring
of receivers, and selectors that only read."""

from __future__ import annotations

import ast
import weakref
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from approvals import selectors, services
from approvals.models import ApprovalRequest
from apps_registry.manifest.compiled import CompiledApp, Runtime
from digitorn_site import signals

ROOT = Path(__file__).resolve().parent.parent
# The HTTP roof and the Django adapters may import any app; the rest of a lower app may not.
ROOF_PARTS = {"api", "admin.py", "apps.py", "management", "migrations"}
HIGHER = {"tooling": ("conversations", "apps_registry"), "approvals": ("conversations", "apps_registry", "tooling")}


def _imports(tree: ast.AST):
    """Every imported module name, at any depth, except under ``if TYPE_CHECKING:``."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


@pytest.mark.parametrize("package", sorted(HIGHER))
def test_a_lower_app_imports_no_higher_one(package):
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if ROOF_PARTS & set(path.relative_to(ROOT / package).parts):
            continue
        for line, module in _imports(ast.parse(path.read_text())):
            if module.split(".")[0] in HIGHER[package]:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert found == []


def test_each_receiver_is_connected_once_by_its_own_app():
    """tooling's receivers are wired by ToolingConfig.ready() from tooling.receivers (no longer by
    digitorn_site or at a module's import), approvals' by ApprovalsConfig.ready()."""
    def owners(signal):
        refs = [entry[1] for entry in signal.receivers]
        live = [ref() if isinstance(ref, weakref.ReferenceType) else ref for ref in refs]
        return [receiver.__module__ for receiver in live if receiver is not None]

    undeployed = owners(signals.app_undeployed)
    assert undeployed.count("approvals.receivers") == 1
    assert undeployed.count("tooling.receivers") == 2  # background tasks, MCP connections
    decided = owners(signals.approval_decided)
    assert decided.count("tooling.receivers") == 2  # direct calls, background tasks
    assert not {"tooling.background", "tooling.modules.mcp", "approvals.apps", "tooling.apps"} & set(
        undeployed + decided
    )


@pytest.mark.django_db
def test_approval_selectors_only_read_and_the_services_expire_first():
    late = services.approval_request_create(
        app=CompiledApp(app_id="appr", name="appr", runtime=Runtime(approval_timeout=300)),
        tool_name="shell.run", params={}, call_params={}, risk_level="high", reason="", principal="alice",
        session_id="s1", agent_id="assistant", origin="agent", origin_ref="call-1",
    )
    ApprovalRequest.objects.filter(pk=late.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with CaptureQueriesContext(connection) as queries:
        assert selectors.approval_get(request_id=late.request_id).status == "pending"
        assert [r.request_id for r in selectors.approval_list_pending(app_id="appr", principal="alice")] == [
            late.request_id
        ]
        assert selectors.approval_get_for(app_id="appr", request_id=late.request_id, principal="alice")
    assert all(q["sql"].lstrip().upper().startswith("SELECT") for q in queries.captured_queries)
    assert ApprovalRequest.objects.get(pk=late.pk).status == "pending"

    assert services.approvals_pending(app_id="appr", principal="alice") == []
    assert services.approval_current(request_id=late.request_id).status == "expired"
