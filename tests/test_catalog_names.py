"""The original Digitorn's module name ``bash`` compiles and runs as the shell module (issue #11)."""

from __future__ import annotations

import pytest
import yaml

from apps_registry.manifest import compile_manifest
from tooling import registry
from tooling.services import tool_invoke

pytestmark = pytest.mark.django_db


def manifest(ws) -> str:
    return yaml.safe_dump({
        "schema_version": 2,
        "app": {"app_id": "bash-app", "name": "Bash app"},
        "agents": [{"id": "main", "brain": {"provider": "scripted", "config": {"rules": [
            {"steps": [{"call": "bash.run", "params": {"command": "echo hi"}}, {"say": "{result}"}]}
        ]}}}],
        "tools": {
            "modules": {"bash": {"workspace": str(ws), "timeout": 5}},
            "capabilities": {"default_policy": "block", "grant": [{"module": "bash", "reason": "runs commands"}]},
        },
    })


def test_a_manifest_declaring_and_granting_bash_gets_the_shell_module(tmp_path):
    assert registry.get_module("bash") is registry.get_module("shell")
    assert registry.canonical_module_id("bash") == "shell"
    app = compile_manifest(manifest(tmp_path), environ={}).app
    for tool in ("bash.run", "bash.bash", "bash"):
        outcome = tool_invoke(app=app, tool_name=tool, params={"command": "echo hi > out.txt; cat out.txt"},
                              caller="t", principal="t")
        assert outcome.status == "ok" and outcome.data["stdout"] == "hi\n", (tool, outcome)
