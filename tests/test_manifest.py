"""The manifest compiler: real YAML text in, CompiledApp or ManifestError out.

The tool catalog comes from the real ``tooling.registry``; no database is needed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from apps_registry.manifest import CompiledApp, CompileResult, compile_manifest
from apps_registry.manifest.loader import MAX_DEPTH, MAX_MANIFEST_BYTES
from digitorn_site.errors import ManifestError, ValidationError
from tests.helpers import AVAILABLE_MODULES

ROOT = Path(__file__).resolve().parent.parent

VALID: dict[str, Any] = {
    "schema_version": 2,
    "app": {
        "app_id": "my-app",
        "name": "My App",
        "version": "1.0",
        "description": "A demo",
        "mode": "conversation",
    },
    "runtime": {"max_turns": 20, "timeout": 300, "approval_timeout": 300},
    "agents": [
        {
            "id": "assistant",
            "name": "Assistant",
            "system_prompt": "You are helpful.",
            "modules": ["filesystem"],
            "brain": {
                "provider": "scripted",
                "config": {
                    "rules": [
                        {
                            "when": "list",
                            "steps": [{"call": "filesystem.ls", "params": {"path": "."}}, {"say": "done"}],
                        },
                        {"steps": [{"say": "You said: {message}"}]},
                    ]
                },
            },
        },
        {"id": "writer", "brain": {"provider": "openai", "model": "gpt-4o-mini", "temperature": 0.5}},
    ],
    "tools": {
        "modules": {"filesystem": {"workspace": "./ws"}, "shell": {"timeout": 30}},
        "capabilities": {
            "default_policy": "approve",
            "max_risk_level": "high",
            "grant": [{"module": "filesystem", "actions": ["read", "ls"], "reason": "browsing"}],
            "approve": [{"module": "shell", "reason": "runs commands"}],
            "deny": [{"module": "filesystem", "actions": ["delete"]}],
        },
    },
    "ui": {"greeting": "Demo"},
}

DELETE = object()


def dump(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def variant(*changes: tuple[str, Any]) -> str:
    """VALID with dotted-path changes applied (``agents.0.brain.temperature``); DELETE removes a key."""
    data = copy.deepcopy(VALID)
    for dotted, value in changes:
        *parents, last = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if value is DELETE:
            del node[key]
        else:
            node[key] = value
    return dump(data)


def compile_errors(text: str | bytes, **kwargs) -> list[dict]:
    with pytest.raises(ManifestError) as info:
        compile_manifest(text, **kwargs)
    errors = info.value.errors
    assert errors, "a ManifestError must carry at least one error"
    for item in errors:
        assert set(item) >= {"path", "message"}
        assert item["message"]
    return errors


def test_valid_manifest_compiles_to_the_expected_app():
    result = compile_manifest(dump(VALID), environ={})
    assert isinstance(result, CompileResult)
    app = result.app
    assert (app.app_id, app.name, app.version, app.description, app.mode) == (
        "my-app",
        "My App",
        "1.0",
        "A demo",
        "conversation",
    )
    assert (
        app.runtime.max_turns == 20
        and app.runtime.timeout == 300.0
        and isinstance(app.runtime.timeout, float)
    )
    assert [a.id for a in app.agents] == ["assistant", "writer"]
    assert app.agents[0].modules == ("filesystem",)
    assert app.agents[1].modules is None
    assert app.agents[1].name == "writer"  # defaults to the id
    assert app.agents[1].brain.model == "gpt-4o-mini" and app.agents[1].brain.temperature == 0.5
    assert app.modules == {"filesystem": {"workspace": "./ws"}, "shell": {"timeout": 30}}
    caps = app.capabilities
    assert caps is not None and caps.default_policy == "approve"
    assert caps.grant[0].module == "filesystem" and caps.grant[0].actions == ("read", "ls")
    assert caps.approve[0].actions is None
    assert app.security == {} and app.ui == {"greeting": "Demo"} and app.dev == {}
    assert result.missing_secrets == () and result.warnings == ()
    assert result.raw_yaml == dump(VALID)
    assert result.yaml_hash == hashlib.sha256(dump(VALID).encode()).hexdigest()


def test_compiled_app_survives_a_json_round_trip():
    app = compile_manifest(dump(VALID), environ={}).app
    stored = json.loads(json.dumps(app.to_dict()))
    assert CompiledApp.from_dict(stored) == app


def test_defaults_fill_a_minimal_manifest():
    text = """
schema_version: 2
app: {app_id: tiny}
agents:
  - id: bot
    brain: {provider: scripted, config: {rules: [{steps: [{say: hi}]}]}}
"""
    app = compile_manifest(text, environ={}).app
    assert app.name == "tiny" and app.version == "1.0" and app.mode == "conversation"
    # The original's defaults (was max_turns 20 in this project's earlier dialect).
    assert app.runtime.max_turns == 50 and app.runtime.rate_limit_rpm is None
    assert app.capabilities is None  # no capabilities block: dev mode
    assert app.modules == {}


def test_empty_capabilities_block_means_the_default_policy():
    text = variant(("tools.capabilities", {}))
    caps = compile_manifest(text, environ={}).app.capabilities
    assert caps is not None and caps.default_policy == "approve" and caps.grant == ()


# -- broken manifests ----------------------------------------------------------------------

BROKEN: list[tuple[str, str, str, str]] = [
    ("app_id missing", variant(("app.app_id", DELETE)), "app.app_id", "required"),
    ("app_id with a space", variant(("app.app_id", "my app")), "app.app_id", "not a valid app id"),
    ("app_id reserved", variant(("app.app_id", "deploy")), "app.app_id", "reserved"),
    (
        "app_id a number",
        variant(("app.app_id", 123)),
        "app.app_id",
        "must be a string, got integer 123; quote it",
    ),
    ("unknown mode", variant(("app.mode", "one-shot")), "app.mode", "did you mean 'one_shot'?"),
    ("typo in app block", variant(("app.nmae", "X")), "app.nmae", "unknown key; did you mean 'name'?"),
    ("version a boolean", variant(("app.version", True)), "app.version", "must be a version string"),
    ("no app block", variant(("app", DELETE)), "app", "required"),
    ("typo in runtime", variant(("runtime.max_turn", 3)), "runtime.max_turn", "did you mean 'max_turns'?"),
    ("max_turns zero", variant(("runtime.max_turns", 0)), "runtime.max_turns", "must be >= 1, got 0"),
    ("timeout zero", variant(("runtime.timeout", 0)), "runtime.timeout", "must be > 0"),
    ("timeout quoted", variant(("runtime.timeout", "30")), "runtime.timeout", "remove the quotes"),
    (
        "approval_timeout low",
        variant(("runtime.approval_timeout", 10)),
        "runtime.approval_timeout",
        "between 30 and 3600",
    ),
    (
        "approval_timeout high",
        variant(("runtime.approval_timeout", 4000)),
        "runtime.approval_timeout",
        "<= 3600",
    ),
    ("rate_limit_rpm zero", variant(("runtime.rate_limit_rpm", 0)), "runtime.rate_limit_rpm", ">= 1"),
    ("max_turns fractional", variant(("runtime.max_turns", 2.5)), "runtime.max_turns", "whole number"),
    ("agents a mapping", variant(("agents", {"id": "x"})), "agents", "must be a list of agents, got mapping"),
    ("agent id missing", variant(("agents.0.id", DELETE)), "agents[0].id", "required"),
    ("agent id invalid", variant(("agents.0.id", "bad id!")), "agents[0].id", "not a valid agent id"),
    (
        "agent ids duplicated",
        variant(("agents.1.id", "assistant")),
        "agents[1].id",
        "duplicate agent id 'assistant'",
    ),
    ("brain missing", variant(("agents.1.brain", DELETE)), "agents[1].brain", "required"),
    (
        "provider typo",
        variant(("agents.1.brain.provider", "openia")),
        "agents[1].brain.provider",
        "did you mean 'openai'?",
    ),
    (
        "openai without model",
        variant(("agents.1.brain.model", DELETE)),
        "agents[1].brain.model",
        "required for provider 'openai'",
    ),
    (
        "temperature too high",
        variant(("agents.1.brain.temperature", 3)),
        "agents[1].brain.temperature",
        "must be <= 2",
    ),
    (
        "temperature negative",
        variant(("agents.1.brain.temperature", -0.1)),
        "agents[1].brain.temperature",
        "between 0 and 2",
    ),
    ("max_tokens zero", variant(("agents.1.brain.max_tokens", 0)), "agents[1].brain.max_tokens", ">= 1"),
    (
        "brain timeout negative",
        variant(("agents.1.brain.timeout", -1)),
        "agents[1].brain.timeout",
        "must be > 0",
    ),
    (
        "brain key typo",
        variant(("agents.1.brain.modle", "x")),
        "agents[1].brain.modle",
        "did you mean 'model'?",
    ),
    (
        "base_url not http",
        variant(("agents.1.brain.config", {"base_url": "localhost:11434"})),
        "agents[1].brain.config.base_url",
        "http:// or https://",
    ),
    (
        "agent module unknown",
        variant(("agents.0.modules", ["filesytem"])),
        "agents[0].modules[0]",
        "did you mean 'filesystem'?",
    ),
    (
        "scripted without rules",
        variant(("agents.0.brain.config", {})),
        "agents[0].brain.config.rules",
        "required for the scripted provider",
    ),
    (
        "rules not a list",
        variant(("agents.0.brain.config.rules", {"when": "x"})),
        "agents[0].brain.config.rules",
        "must be a list of rules",
    ),
    (
        "rule bad regex",
        variant(("agents.0.brain.config.rules.0.when", "([a-z")),
        "agents[0].brain.config.rules[0].when",
        "invalid regular expression",
    ),
    (
        "rule unknown key",
        variant(("agents.0.brain.config.rules.0.wen", "x")),
        "agents[0].brain.config.rules[0].wen",
        "did you mean 'when'?",
    ),
    (
        "rule without steps",
        variant(("agents.0.brain.config.rules.1.steps", DELETE)),
        "agents[0].brain.config.rules[1].steps",
        "required",
    ),
    (
        "step with call and say",
        variant(("agents.0.brain.config.rules.1.steps", [{"call": "filesystem.ls", "say": "x"}])),
        "agents[0].brain.config.rules[1].steps[0]",
        "exactly one of call, calls or say",
    ),
    (
        "step of unknown kind",
        variant(("agents.0.brain.config.rules.1.steps", [{"sya": "x"}])),
        "agents[0].brain.config.rules[1].steps[0]",
        "did you mean 'say'?",
    ),
    (
        "step calls unknown action",
        variant(("agents.0.brain.config.rules.0.steps.0.call", "filesystem.reed")),
        "agents[0].brain.config.rules[0].steps[0].call",
        "unknown action 'reed' of module 'filesystem'; did you mean 'read'?",
    ),
    (
        "step calls a module outside the agent's",
        variant(("agents.0.brain.config.rules.0.steps.0.call", "shell.run")),
        "agents[0].brain.config.rules[0].steps[0].call",
        "not in this agent's modules",
    ),
    (
        "step calls an undeclared module",
        variant(
            ("agents.0.modules", DELETE), ("agents.0.brain.config.rules.0.steps.0.call", "memory.recall")
        ),
        "agents[0].brain.config.rules[0].steps[0].call",
        "not declared under tools.modules",
    ),
    (
        "step call not a tool name",
        variant(("agents.0.brain.config.rules.0.steps.0.call", "ls")),
        "agents[0].brain.config.rules[0].steps[0].call",
        "write 'module.action'",
    ),
    (
        "step calls empty",
        variant(("agents.0.brain.config.rules.0.steps", [{"calls": []}])),
        "agents[0].brain.config.rules[0].steps[0].calls",
        "non-empty list",
    ),
    (
        "step params not a mapping",
        variant(("agents.0.brain.config.rules.0.steps.0.params", ["."])),
        "agents[0].brain.config.rules[0].steps[0].params",
        "mapping of tool parameters",
    ),
    (
        "say not text",
        variant(("agents.0.brain.config.rules.1.steps", [{"say": 42}])),
        "agents[0].brain.config.rules[1].steps[0].say",
        "must be a string",
    ),
    (
        "unknown module",
        variant(("tools.modules.filesytem", {})),
        "tools.modules.filesytem",
        f"module 'filesytem' is not available in this build (available: {AVAILABLE_MODULES}); "
        "did you mean 'filesystem'?",
    ),
    (
        "module setting typo",
        variant(("tools.modules.filesystem.workspce", "./x")),
        "tools.modules.filesystem.workspce",
        "did you mean 'workspace'?",
    ),
    (
        "module setting wrong type",
        variant(("tools.modules.filesystem.max_file_bytes", "big")),
        "tools.modules.filesystem.max_file_bytes",
        "must be of type integer",
    ),
    (
        "module config a list",
        variant(("tools.modules.shell", [1])),
        "tools.modules.shell",
        "must be a mapping of settings",
    ),
    (
        "tools key typo",
        variant(("tools.capabilites", {})),
        "tools.capabilites",
        "did you mean 'capabilities'?",
    ),
    (
        "unknown policy",
        variant(("tools.capabilities.default_policy", "sometimes")),
        "tools.capabilities.default_policy",
        "expected one of: approve, auto, block",
    ),
    (
        "unknown risk level",
        variant(("tools.capabilities.max_risk_level", "extreme")),
        "tools.capabilities.max_risk_level",
        "expected one of: high, low, medium",
    ),
    (
        "rule unknown module",
        variant(("tools.capabilities.grant", [{"module": "filesytem"}])),
        "tools.capabilities.grant[0].module",
        "unknown module 'filesytem'; did you mean 'filesystem'?",
    ),
    (
        "rule unknown action",
        variant(("tools.capabilities.grant.0.actions", ["read", "raed"])),
        "tools.capabilities.grant[0].actions[1]",
        "did you mean 'read'?",
    ),
    (
        "rule string unknown action",
        variant(("tools.capabilities.deny", ["filesystem.raed"])),
        "tools.capabilities.deny[0]",
        "unknown action 'raed'",
    ),
    (
        "rule without module",
        variant(("tools.capabilities.approve", [{"actions": ["run"]}])),
        "tools.capabilities.approve[0].module",
        "required",
    ),
    (
        "rule list a mapping",
        variant(("tools.capabilities.grant", {"module": "shell"})),
        "tools.capabilities.grant",
        "must be a list of rules",
    ),
    (
        "grant and deny name one action",
        variant(("tools.capabilities.grant.0.actions", ["read", "delete"])),
        "tools.capabilities.grant[0]",
        "filesystem.delete is both granted and denied",
    ),
    ("unknown top-level key", variant(("agnets", [])), "agnets", "did you mean 'agents'?"),
    ("security not a mapping", variant(("security", ["mask"])), "security", "must be a mapping, got list"),
    (
        "schema_version unknown",
        variant(("schema_version", 3)),
        "schema_version",
        "must be 1 (the legacy flat form) or 2",
    ),
    ("legacy key beside app: folded, bad value still named", variant(("execution", {"max_turns": 0}),
     ("runtime", DELETE)), "execution.max_turns", "must be >= 1"),
    ("unavailable module", variant(("tools.modules.lsp", {})), "tools.modules.lsp",
     f"module 'lsp' is not available in this build (available: {AVAILABLE_MODULES})"),
]


@pytest.mark.parametrize(("text", "path", "fragment"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_manifest_names_the_path_and_the_fix(text: str, path: str, fragment: str):
    errors = compile_errors(text, environ={})
    assert errors[0]["path"] == path, errors
    assert fragment in errors[0]["message"], errors[0]


def test_broken_table_is_big_enough():
    assert len(BROKEN) >= 25


def test_every_problem_is_reported_not_just_the_first():
    text = variant(
        ("app.mode", "chat"),
        ("runtime.max_turns", 0),
        ("agents.1.brain.temperature", 9),
        ("tools.modules.shel", {}),
        ("tools.capabilities.default_policy", "maybe"),
    )
    with pytest.raises(ManifestError) as info:
        compile_manifest(text, environ={})
    paths = [e["path"] for e in info.value.errors]
    assert paths == [
        "app.mode",
        "runtime.max_turns",
        "tools.modules.shel",
        "tools.capabilities.default_policy",
        "agents[1].brain.temperature",
    ]
    assert "(and 4 more errors)" in str(info.value)


def test_manifest_error_is_a_400_validation_error_with_details():
    with pytest.raises(ManifestError) as info:
        compile_manifest(variant(("app.app_id", "deploy")), environ={})
    error = info.value
    assert isinstance(error, ValidationError)
    assert error.status_code == 400 and error.error_code == "INVALID_MANIFEST"
    assert error.details == {"errors": error.errors}
    assert str(error).startswith("app.app_id: 'deploy' is reserved")


def test_errors_carry_the_line_of_the_offending_key():
    text = "schema_version: 2\napp:\n  app_id: ok\n  mode: chat\nagents: []\n"
    errors = compile_errors(text, environ={})
    assert errors[0]["path"] == "app.mode" and errors[0]["line"] == 4 and errors[0]["column"] == 3


def test_a_missing_key_points_at_its_enclosing_block():
    text = "schema_version: 2\napp:\n  name: x\nagents: [{id: a, brain: {provider: scripted, config: {rules: []}}}]\n"
    errors = compile_errors(text, environ={})
    assert errors[0]["path"] == "app.app_id" and errors[0]["line"] == 2


# -- did-you-mean -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        (variant(("runtime.max_turn", 3)), "runtime.max_turn", "unknown key; did you mean 'max_turns'?"),
        (
            variant(("tools.modules.Filesystem", {})),
            "tools.modules.Filesystem",
            f"module 'Filesystem' is not available in this build (available: {AVAILABLE_MODULES}); "
            "did you mean 'filesystem'?",
        ),
        (
            variant(("tools.capabilities.grant.0.actions", ["lss"])),
            "tools.capabilities.grant[0].actions[0]",
            "unknown action 'lss' of module 'filesystem'; did you mean 'ls'?",
        ),
        (
            variant(("runtime.zzz", 3)),
            "runtime.zzz",
            "unknown key; expected one of: approval_timeout, context, context_window_messages",
        ),
    ],
)
def test_did_you_mean(text: str, path: str, message: str):
    errors = compile_errors(text, environ={})
    assert errors[0]["path"] == path
    assert errors[0]["message"].startswith(message)


# -- legacy form ----------------------------------------------------------------------------

LEGACY = """
app_id: my-app
name: My App
version: 1.0
description: A demo
mode: conversation
execution: {max_turns: 20, timeout: 300, approval_timeout: 300}
modules:
  filesystem: {workspace: ./ws}
  shell: {timeout: 30}
capabilities:
  default_policy: approve
  max_risk_level: high
  grant: [{module: filesystem, actions: [read, ls], reason: browsing}]
  approve: [{module: shell, reason: runs commands}]
  deny: ["filesystem.delete"]
agents:
  - id: assistant
    name: Assistant
    system_prompt: You are helpful.
    modules: [filesystem]
    brain:
      provider: scripted
      config:
        rules:
          - when: list
            steps: [{call: filesystem__ls, params: {path: .}}, {say: done}]
          - steps: [{say: "You said: {message}"}]
  - id: writer
    provider: openai
    model: gpt-4o-mini
    brain_temperature_is_not_a_key: removed below
ui: {greeting: Demo}
""".replace("    brain_temperature_is_not_a_key: removed below\n", "")


def test_legacy_and_canonical_forms_compile_to_the_same_app():
    canonical = copy.deepcopy(VALID)
    canonical["agents"][1]["brain"].pop("temperature")  # the legacy file keeps the default
    legacy = compile_manifest(LEGACY, environ={}).app
    current = compile_manifest(dump(canonical), environ={}).app
    assert legacy.to_dict() == current.to_dict()


def test_legacy_single_agent_with_brain_shorthand_and_module_list():
    legacy = """
schema_version: 1
app_id: solo
execution: {mode: one_shot, max_turns: 5}
modules: [filesystem, shell]
agent:
  system_prompt: Be brief.
  brain: openai/gpt-4o-mini
"""
    canonical = """
schema_version: 2
app: {app_id: solo, mode: one_shot}
runtime: {max_turns: 5}
agents:
  - {id: main, system_prompt: Be brief., brain: {provider: openai, model: gpt-4o-mini}}
tools: {modules: {filesystem: null, shell: {}}}
"""
    a = compile_manifest(legacy, environ={}).app
    b = compile_manifest(canonical, environ={}).app
    assert a.to_dict() == b.to_dict()
    assert a.agents[0].id == "main" and a.mode == "one_shot" and a.modules == {"filesystem": {}, "shell": {}}


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        (
            "app_id: x\nexecution: {max_turn: 3}\nagent: {brain: openai/gpt-4o}\n",
            "execution.max_turn",
            "did you mean 'max_turns'?",
        ),
        (
            "app_id: x\nexecution: {timeout: -1}\nagent: {brain: openai/gpt-4o}\n",
            "execution.timeout",
            "must be > 0",
        ),
        (
            "app_id: x\nmodules: [filesystem, shel]\nagent: {brain: openai/gpt-4o}\n",
            "modules[1]",
            "did you mean 'shell'?",
        ),
        (
            "app_id: x\nmodules: {shell: {timout: 1}}\nagent: {brain: openai/gpt-4o}\n",
            "modules.shell.timout",
            "did you mean 'timeout'?",
        ),
        ("app_id: x\nagent: {brain: openai/gpt-4o}\nagents: []\n", "agent", "not both"),
        (
            "app_id: x\nagent: {brain: {provider: openai}}\n",
            "agent.brain.model",
            "required for provider 'openai'",
        ),
        ("app_id: x\nagent: {provider: anthropic}\n", "agent.model", "required for provider 'anthropic'"),
        ("app_id: x\nmodes: one_shot\nagent: {brain: openai/gpt-4o}\n", "modes", "did you mean 'mode'?"),
        ("name: x\nagent: {brain: openai/gpt-4o}\n", "app.app_id", "required"),
        (
            "app_id: x\ncapabilities: {grant: [shell.rn]}\nmodules: [shell]\nagent: {brain: openai/gpt-4o}\n",
            "capabilities.grant[0]",
            "did you mean 'run'?",
        ),
    ],
)
def test_legacy_errors_name_the_path_the_author_wrote(text: str, path: str, fragment: str):
    errors = compile_errors(text, environ={})
    assert errors[0]["path"] == path, errors
    assert fragment in errors[0]["message"]


def test_legacy_forms_beside_nested_blocks_fold_and_the_nested_form_wins():
    # The original folds execution:/modules:/... beside app: (most of its examples are written so).
    text = (
        "app_id: y\nmodules: [shell]\napp: {app_id: x}\ntools: {}\nagent: {brain: openai/gpt-4o}\n"
        "execution: {max_turns: 9, timeout: 20}\nruntime: {timeout: 40}\n"
    )
    result = compile_manifest(text, environ={})
    app = result.app
    assert app.app_id == "x" and list(app.modules) == ["shell"]
    assert app.runtime.max_turns == 9 and app.runtime.timeout == 40.0
    assert any(w.startswith("app_id: ignored") for w in result.warnings)
    assert any(w.startswith("execution.timeout: ignored") for w in result.warnings)


def test_canonical_blocks_without_schema_version_compile_with_a_warning():
    data = copy.deepcopy(VALID)
    del data["schema_version"]
    result = compile_manifest(dump(data), environ={})
    assert result.app.to_dict() == compile_manifest(dump(VALID), environ={}).app.to_dict()


# -- interpolation --------------------------------------------------------------------------


def test_env_interpolation_with_and_without_default():
    text = variant(
        ("app.description", "Runs on {{env.HOST}} for {{ env.TEAM ?? 'nobody' }} and {{env.X ?? \"dq\"}}"),
        ("runtime.timeout", "{{env.T ?? '30'}}"),
        ("runtime.max_turns", "{{env.TURNS}}"),
        ("tools.modules.filesystem.max_file_bytes", "{{env.MAX_BYTES ?? '2048'}}"),
    )
    app = compile_manifest(text, environ={"HOST": "box-1", "TURNS": "7"}).app
    # Text keeps its {{env.X}} markers in the stored form; they resolve in memory (issue #10).
    assert app.description == "Runs on {{env.HOST}} for {{env.TEAM ?? 'nobody'}} and {{env.X ?? 'dq'}}"
    assert app.with_secrets({}, {"HOST": "box-1"}).description == "Runs on box-1 for nobody and dq"
    assert app.runtime.timeout == 30.0 and isinstance(app.runtime.timeout, float)
    assert app.runtime.max_turns == 7 and isinstance(app.runtime.max_turns, int)
    assert app.modules["filesystem"]["max_file_bytes"] == 2048

    env = {"HOST": "h", "TURNS": "7", "T": "45", "TEAM": "ops"}
    overridden = compile_manifest(text, environ=env).app
    assert overridden.runtime.timeout == 45.0 and "for ops" in overridden.with_secrets({}, env).description


def test_unset_env_variable_without_default_warns_in_text_and_errors_in_a_number():
    # Text keeps the marker, read when the app runs (the Go port's way); the original refused it.
    result = compile_manifest(variant(("agents.1.brain.model", "{{env.MODEL_NAME}}")), environ={})
    assert result.app.agents[1].brain.model == "{{env.MODEL_NAME}}"
    assert any(w.startswith("agents[1].brain.model: environment variable MODEL_NAME is not set") for w in result.warnings)
    errors = compile_errors(variant(("runtime.timeout", "{{env.T_SECONDS}}")), environ={})
    assert errors[0]["path"] == "runtime.timeout" and "must be a number" in errors[0]["message"]


def test_env_interpolation_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("TEST_MANIFEST_MODEL", "gpt-4.1-mini")
    app = compile_manifest(variant(("agents.1.brain.model", "{{env.TEST_MANIFEST_MODEL}}"))).app
    assert app.agents[1].brain.model == "{{env.TEST_MANIFEST_MODEL}}"
    assert app.env_refs == ("TEST_MANIFEST_MODEL",)


@pytest.mark.parametrize(
    ("value", "path", "fragment"),
    [
        ("{{env.T}}", "runtime.timeout", "must be a number, got string (from '{{env.T}}')"),
        ("{{foo.bar}}", "runtime.timeout", "must be a number, got string '{{foo.bar}}'"),
        ("{{sys.nope}}", "runtime.timeout", "unknown {{sys.nope}}"),
        ("{{env.DIGITORN_API_KEY}}", "runtime.timeout", "the daemon's own credentials"),
        ("{{env.T ?? 30}}", "runtime.timeout", "malformed reference"),
        ("{{secret.T}}", "runtime.timeout", "only allowed in text values"),
        ("{{secret.T ?? 'x'}}", "runtime.timeout", "secrets take no default"),
    ],
)
def test_bad_interpolation(value: str, path: str, fragment: str):
    errors = compile_errors(variant(("runtime.timeout", value)), environ={"T": "soon"})
    assert errors[0]["path"] == path
    assert fragment in errors[0]["message"]


def test_braces_without_a_namespace_are_left_alone():
    text = variant(("agents.0.system_prompt", "Greet {{user}} politely."))
    assert compile_manifest(text, environ={}).app.agents[0].system_prompt == "Greet {{user}} politely."


def test_env_values_are_not_scanned_again():
    text = variant(("app.description", "{{env.INJECT}}"))
    app = compile_manifest(text, environ={"INJECT": "{{secret.STOLEN}}"}).app
    assert app.secret_refs == ()


# -- secrets --------------------------------------------------------------------------------


def _secret_manifest() -> str:
    return variant(
        (
            "agents.1.brain.config",
            {"api_key": "{{ secret.OPENAI_KEY }}", "base_url": "https://llm.example/v1"},
        ),
        ("tools.modules.shell.env", {"TOKEN": "{{secret.SHELL_TOKEN}}", "BOTH": "{{secret.OPENAI_KEY}}"}),
    )


def test_secret_markers_are_kept_and_recorded():
    result = compile_manifest(_secret_manifest(), secrets={"OPENAI_KEY": "sk-live-123"}, environ={})
    app = result.app
    assert app.secret_refs == ("OPENAI_KEY", "SHELL_TOKEN")
    assert app.agents[1].brain.config["api_key"] == "{{secret.OPENAI_KEY}}"  # normalised marker
    assert result.missing_secrets == ("SHELL_TOKEN",)
    stored = json.dumps(app.to_dict())
    assert "sk-live-123" not in stored and "{{secret.OPENAI_KEY}}" in stored


def test_a_secret_in_the_environment_is_not_missing_and_still_not_substituted():
    result = compile_manifest(
        _secret_manifest(), secrets={}, environ={"SHELL_TOKEN": "env-token", "OPENAI_KEY": "k"}
    )
    assert result.missing_secrets == ()
    stored = json.dumps(result.app.to_dict())
    assert "env-token" not in stored and "{{secret.SHELL_TOKEN}}" in stored


def test_with_secrets_substitutes_in_memory_only():
    app = compile_manifest(_secret_manifest(), environ={}).app
    resolved = app.with_secrets({"OPENAI_KEY": "sk-1", "SHELL_TOKEN": "t-2"})
    assert resolved.agents[1].brain.config["api_key"] == "sk-1"
    assert resolved.modules["shell"]["env"] == {"TOKEN": "t-2", "BOTH": "sk-1"}
    assert app.agents[1].brain.config["api_key"] == "{{secret.OPENAI_KEY}}"


def test_secret_markers_do_not_fail_module_schema_checks():
    text = variant(("tools.modules.filesystem.workspace", "{{secret.WS}}"))
    assert compile_manifest(text, environ={}).app.modules["filesystem"]["workspace"] == "{{secret.WS}}"


def test_a_credential_from_the_environment_is_stored_as_a_marker():
    text = variant(("agents.1.brain.config", {"api_key": "{{env.OPENAI_API_KEY}}"}))
    result = compile_manifest(text, environ={"OPENAI_API_KEY": "sk-x"})
    assert result.app.agents[1].brain.config["api_key"] == "{{env.OPENAI_API_KEY}}"
    assert "sk-x" not in json.dumps(result.app.to_dict())
    resolved = result.app.with_secrets({}, {"OPENAI_API_KEY": "sk-x"})
    assert resolved.agents[1].brain.config["api_key"] == "sk-x" and "sk-x" in resolved.secret_values


# -- parsing --------------------------------------------------------------------------------


def test_billion_laughs_is_refused_before_expansion():
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 10):
        prev, name = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 10) + "]")
    errors = compile_errors("\n".join(lines) + "\n", environ={})
    assert errors[0]["path"] == ""
    assert "possible alias bomb" in errors[0]["message"]


def test_recursive_alias_is_refused():
    errors = compile_errors("a: &x [1, *x]\n", environ={})
    assert "recursive alias" in errors[0]["message"]


def test_anchors_share_blocks_through_extension_keys():
    text = """
schema_version: 2
app: {app_id: shared}
x-brain: &brain {provider: openai, model: gpt-4o-mini, temperature: 0.1}
agents:
  - {id: a, brain: *brain}
  - id: b
    brain:
      <<: *brain
      temperature: 0.9
"""
    app = compile_manifest(text, environ={}).app
    assert [a.brain.temperature for a in app.agents] == [0.1, 0.9]
    assert app.agents[1].brain.model == "gpt-4o-mini"
    assert "x-brain" not in json.dumps(app.to_dict())


@pytest.mark.parametrize(
    ("text", "got"),
    [("- a\n- b\n", "list"), ("just text\n", "string"), ("42\n", "integer"), ("null\n", "null")],
)
def test_document_must_be_a_mapping(text: str, got: str):
    errors = compile_errors(text)
    assert errors[0]["message"] == f"the manifest must be a YAML mapping at the top level, got {got}"


def test_invalid_utf8_is_refused():
    errors = compile_errors(b"schema_version: 2\napp: {app_id: caf\xe9}\n")
    assert "not valid UTF-8" in errors[0]["message"] and "offset 35" in errors[0]["message"]


def test_utf8_bytes_with_bom_compile():
    result = compile_manifest("\ufeff".encode() + dump(VALID).encode("utf-8"), environ={})
    assert result.app.app_id == "my-app" and not result.raw_yaml.startswith("\ufeff")


def test_syntax_error_reports_line_and_column():
    text = "schema_version: 2\napp:\n  app_id: x\n  name: [unclosed\nagents: []\n"
    errors = compile_errors(text)
    assert errors[0]["path"] == ""
    assert errors[0]["message"].startswith("YAML syntax error at line 5")
    assert errors[0]["line"] == 5


def test_tabs_indentation_error_has_a_line():
    errors = compile_errors("app:\n\tapp_id: x\n")
    assert "line 2" in errors[0]["message"]


def test_multiple_documents_are_refused():
    errors = compile_errors(dump(VALID) + "---\n" + dump(VALID))
    assert "more than one YAML document" in errors[0]["message"]


def test_size_limit():
    text = dump(VALID) + "#" + "x" * MAX_MANIFEST_BYTES + "\n"
    errors = compile_errors(text)
    assert "the limit is 1048576 bytes (1 MiB)" in errors[0]["message"]
    errors = compile_errors(text.encode())
    assert "the limit is 1048576 bytes" in errors[0]["message"]


def test_empty_manifest():
    assert "empty" in compile_errors("  \n# only a comment\n")[0]["message"]


def test_deep_nesting_is_refused():
    errors = compile_errors("ui: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n")
    assert f"deeper than {MAX_DEPTH} levels" in errors[0]["message"]


def test_duplicate_keys_are_refused():
    text = "schema_version: 2\napp: {app_id: a}\napp: {app_id: b}\n"
    errors = compile_errors(text)
    assert (
        errors[0]["path"] == "app" and "duplicate key 'app' (first defined at line 2)" in errors[0]["message"]
    )


def test_boolean_looking_keys_are_read_as_the_text_written():
    # YAML 1.1 reads a plain `on:` key as True; hooks are written `on: turn_end` (the original).
    result = compile_manifest(variant(("ui", {"on": 1})).replace("'on'", "on"), environ={})
    assert result.app.ui == {"on": 1}
    assert any(w.startswith("ui.on: unknown key, ignored") for w in result.warnings)


def test_custom_tags_are_refused():
    errors = compile_errors("schema_version: 2\napp: !!python/object:os.system {}\n")
    assert "line 2" in errors[0]["message"]


def test_dates_stay_strings():
    app = compile_manifest(
        variant(("app.version", "2024-05-01")).replace("'2024-05-01'", "2024-05-01"), environ={}
    ).app
    assert app.version == "2024-05-01"


def test_numeric_version_is_coerced_to_text():
    assert compile_manifest(variant(("app.version", 2)), environ={}).app.version == "2"


# -- tool names and capability forms --------------------------------------------------------


def test_tool_references_accept_the_wire_form_and_are_normalised():
    text = variant(
        (
            "agents.0.brain.config.rules.0.steps",
            [{"calls": [{"call": "filesystem__read", "params": {"path": "a"}}]}],
        )
    )
    app = compile_manifest(text, environ={}).app
    assert app.agents[0].brain.config["rules"][0]["steps"][0]["calls"][0]["call"] == "filesystem.read"


def test_capability_rules_accept_string_forms():
    text = variant(("tools.capabilities.grant", ["filesystem", "shell.run", "filesystem__stat"]))
    grant = compile_manifest(text, environ={}).app.capabilities.grant
    assert [(r.module, r.actions) for r in grant] == [
        ("filesystem", None),
        ("shell", ("run",)),
        ("filesystem", ("stat",)),
    ]


def test_rule_for_a_known_but_undeclared_module_warns():
    result = compile_manifest(variant(("tools.capabilities.deny", [{"module": "database"}])), environ={})
    assert result.app.capabilities.deny[0].module == "database"
    assert result.warnings == (
        "tools.capabilities.deny[0].module: module 'database' is not declared under tools.modules, "
        "so this rule has no effect",
    )


# -- purity ---------------------------------------------------------------------------------


def test_importing_the_compiler_does_not_load_the_orm():
    code = (
        "import sys, apps_registry.manifest.compiler as c; "
        "bad = [m for m in ('django.db.models', 'tooling.registry') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_an_app_without_agents_deploys_with_a_warning():
    # The original accepts it (only app: is required); running it answers that it declares no agents.
    for agents in (DELETE, []):
        result = compile_manifest(variant(("agents", agents), ("tools.capabilities.grant", [])), environ={})
        assert result.app.agents == ()
        assert any(w.startswith("agents: no agents") for w in result.warnings)
