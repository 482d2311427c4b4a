"""Shared bits of the tool-module tests: a compiled app over a workspace, and tool_invoke shortcuts."""

from __future__ import annotations

from pathlib import Path

from apps_registry.manifest.compiled import AgentSpec, CompiledApp, Runtime
from tooling.services import tool_invoke


def make_app(root: Path, app_id: str = "modtest", **modules: dict) -> CompiledApp:
    config: dict = {"filesystem": {"workspace": str(root)}}
    config.update(modules)
    return CompiledApp(
        app_id=app_id,
        name="Module test",
        modules=config,
        agents=(AgentSpec(id="assistant"),),
        runtime=Runtime(max_tool_result_chars=200_000),
    )


def call(app: CompiledApp, tool: str, **params):
    return tool_invoke(app=app, tool_name=tool, params=params, caller="test", principal="tester")


def ok(app: CompiledApp, tool: str, **params):
    outcome = call(app, tool, **params)
    assert outcome.status == "ok", outcome.error
    return outcome.data


def err(app: CompiledApp, tool: str, **params) -> str:
    outcome = call(app, tool, **params)
    assert outcome.status == "error", outcome.data
    assert outcome.success is False
    return outcome.error
