"""The original Digitorn's manifest language (issue #11): manifests written in its style, their
equivalence to the canonical form, every warning and error, providers, interpolation, the deploy
API's secrets/assets/summary, the gates the new keys drive, working memory, brain fallback, and
``digitorn validate``. The manifests are written for these tests, modelled on the originals'."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from approvals.policy import resolve_policy
from apps_registry.manifest import compile_manifest
from apps_registry.manifest.compiled import AgentSpec, BrainSpec
from apps_registry.manifest.providers import PROVIDERS
from apps_registry.models import App, AppSecret
from conversations.brains import brain_for
from conversations.brains.fallback import FallbackBrain
from digitorn_site import crypto
from tests.helpers import AVAILABLE_MODULES, client_for, compiles, manifest_errors

ROOT = Path(__file__).resolve().parent.parent
SCRIPTED = "{provider: scripted, config: {rules: [{steps: [{say: hi}]}]}}"


def same(a, b) -> None:
    da, db = a.app.to_dict(), b.app.to_dict()
    da.pop("warnings"), db.pop("warnings")
    assert da == db


# -- the original's forms and their canonical equivalents ---------------------------------------

ORIGINAL_LEGACY = f"""
app: {{app_id: team, name: Team, category: research, icon: "R", color: "#8B5CF6", tags: [a, b],
      short_name: Tm, author: me, quick_prompts: [{{label: Go, message: Start}}]}}
execution:
  mode: conversation
  entry_agent: lead
  max_turns: 12
  timeout: 90
  tool_injection: discovery
  direct_modules: [filesystem]
  workspace: /tmp/team-ws
  workspace_mode: fixed
  greeting: Welcome!
  context: {{strategy: truncate, keep_recent: 6, compression_trigger: 0.5, max_tokens: 32000}}
agents:
  - id: lead
    role: coordinator
    brain: {{provider: deepseek, model: deepseek-chat, top_p: 0.5, native_tool_use: true,
            config: {{api_key: "{{{{secret.DEEPSEEK_API_KEY}}}}"}}, fallback: {SCRIPTED}}}
    system_prompt: Lead the work.
    delegate_to: [reader]
  - id: reader
    role: specialist
    specialty: reads files
    brain: {{provider: ollama, model: qwen2.5-coder}}
    modules: [filesystem, {{shell: [run]}}]
modules:
  filesystem: {{workspace: /tmp/team-ws}}
  shell: {{config: {{timeout: 20}}, constraints: {{allowed_commands: [ls, cat]}}}}
  memory: {{}}
capabilities:
  default_policy: approve
  grant: [{{module: filesystem, tools: [read, ls]}}, memory]
  approve: ["shell.run"]
  deny: [{{module: filesystem, actions: [delete], reason: never}}]
  approval_timeout: 120
  hidden_actions: [{{module: filesystem, actions: [move]}}]
"""

CANONICAL = f"""
schema_version: 2
app: {{app_id: team, name: Team, category: research, icon: "R", color: "#8B5CF6", tags: [a, b],
      short_name: Tm, author: me, quick_prompts: [{{label: Go, message: Start}}]}}
runtime:
  mode: conversation
  entry_agent: lead
  max_turns: 12
  timeout: 90
  tool_injection: discovery
  direct_modules: [filesystem]
  workdir: /tmp/team-ws
  workdir_mode: fixed
  context: {{strategy: truncate, keep_recent: 6, compression_trigger: 0.5, max_tokens: 32000}}
agents:
  - id: lead
    role: coordinator
    brain: {{provider: deepseek, model: deepseek-chat, top_p: 0.5, native_tool_use: true,
            config: {{api_key: "{{{{secret.DEEPSEEK_API_KEY}}}}"}}, fallback: {SCRIPTED}}}
    system_prompt: Lead the work.
    delegate_to: [reader]
  - id: reader
    role: specialist
    specialty: reads files
    brain: {{provider: ollama, model: qwen2.5-coder}}
    modules: [filesystem, {{shell: [run]}}]
tools:
  modules:
    filesystem: {{config: {{workspace: /tmp/team-ws}}}}
    shell: {{config: {{timeout: 20}}, constraints: {{allowed_commands: [ls, cat]}}}}
    memory: {{}}
  capabilities:
    default_policy: approve
    grant: [{{module: filesystem, actions: [read, ls]}}, {{module: memory}}]
    approve: [{{module: shell, actions: [run]}}]
    deny: [{{module: filesystem, actions: [delete], reason: never}}]
    approval_timeout: 120
    hidden_actions: [{{module: filesystem, actions: [move]}}]
ui: {{greeting: Welcome!}}
"""


def test_the_originals_legacy_form_beside_app_compiles_like_the_canonical_form():
    legacy, canonical = compiles(ORIGINAL_LEGACY), compiles(CANONICAL)
    same(legacy, canonical)
    app = legacy.app
    assert app.runtime.max_turns == 12 and app.runtime.timeout == 90.0 and app.runtime.approval_timeout == 120
    assert app.runtime.entry_agent == "lead" and app.agent().id == "lead"
    assert app.runtime.tool_injection == "discovery" and app.runtime.direct_modules == ("filesystem",)
    assert (app.runtime.workdir, app.runtime.workdir_mode) == ("/tmp/team-ws", "fixed")
    assert app.runtime.context["strategy"] == "truncate" and app.runtime.context["keep_recent"] == 6
    assert app.ui["greeting"] == "Welcome!"
    assert app.app_meta["category"] == "research" and app.app_meta["quick_prompts"][0]["label"] == "Go"
    lead, reader = app.agents
    assert (lead.role, lead.delegate_to, lead.brain.top_p, lead.brain.native_tool_use) == (
        "coordinator", ("reader",), 0.5, True)
    assert lead.brain.protocol == "openai" and lead.brain.config["base_url"] == "https://api.deepseek.com/v1"
    assert lead.brain.fallback["provider"] == "scripted"
    assert reader.modules == ("filesystem", "shell") and reader.module_actions == {"shell": ("run",)}
    assert reader.brain.config["base_url"] == "http://localhost:11434/v1"
    assert app.modules["shell"] == {"timeout": 20, "allowed_commands": ["ls", "cat"]}
    caps = app.capabilities
    assert caps.grant[0].actions == ("read", "ls") and caps.grant[1].actions is None
    assert caps.max_risk_level == "medium"  # the original's default
    assert caps.hidden_actions[0].actions == ("move",)


EQUIVALENT = [
    # (legacy or alternative form, canonical form)
    ("app: {app_id: e}\nmodules: {shell: {timeout: 5}}\n", "app: {app_id: e}\ntools: {modules: {shell: {config: {timeout: 5}}}}\n"),
    ("app: {app_id: e}\nexecution: {max_turns: 3}\n", "app: {app_id: e}\nruntime: {max_turns: 3}\n"),
    ("app: {app_id: e, mode: one_shot}\n", "app: {app_id: e}\nruntime: {mode: one_shot}\n"),
    ("app: {app_id: e}\nruntime: {workspace: /w, workspace_mode: none}\n",
     "app: {app_id: e}\nruntime: {workdir: /w, workdir_mode: none}\n"),
    ("app: {app_id: e}\nruntime: {greeting: Hi}\n", "app: {app_id: e}\nui: {greeting: Hi}\n"),
    ("app: {app_id: e}\nexecution: {greeting: Hi}\n", "app: {app_id: e}\nui: {greeting: Hi}\n"),
    ("app: {app_id: e}\nvariables: {who: Ann}\n", "app: {app_id: e}\ndev: {variables: {who: Ann}}\n"),
    ("app: {app_id: e}\nmodules: [shell]\ncapabilities: {grant: [shell]}\n",
     "app: {app_id: e}\ntools: {modules: {shell: {}}, capabilities: {grant: [{module: shell, actions: []}]}}\n"),
    ("app: {app_id: e}\nmodules: [shell]\ncapabilities: {grant: [{module: shell, tools: [run]}]}\n",
     "app: {app_id: e}\ntools: {modules: {shell: {}}, capabilities: {grant: [\"shell.run\"]}}\n"),
    ("app: {app_id: e, theme: {accent: red}}\n", "app: {app_id: e}\nui: {theme: {accent: red}}\n"),
    ("app_id: e\nname: E\n", "app: {app_id: e, name: E}\n"),
    ("app: {app_id: e}\nchannels: {log: {type: log}}\n", "app: {app_id: e}\ntools: {channels: {log: {type: log}}}\n"),
    ("app: {app_id: e}\nbehavior: {profile: coding}\n", "app: {app_id: e}\nsecurity: {behavior: {profile: coding}}\n"),
    ("app: {app_id: e}\nskills: [{command: /x}]\n", "app: {app_id: e}\ndev: {skills: [{command: /x}]}\n"),
    ("app: {app_id: e}\ninclude: {agents: [a.yaml]}\n", "app: {app_id: e}\ndev: {include: {agents: [a.yaml]}}\n"),
    ("app: {app_id: e}\nmiddleware: [{audit: {}}]\n", "app: {app_id: e}\nruntime: {middleware: [{audit: {}}]}\n"),
    ("app: {app_id: e}\npipeline: [{app: other}]\n", "app: {app_id: e}\nruntime: {pipeline: [{app: other}]}\n"),
    ("app: {app_id: e}\nwidgets: {version: 1}\n", "app: {app_id: e}\nui: {widgets: {version: 1}}\n"),
    ("app: {app_id: e}\nworkspace: {render_mode: code}\n", "app: {app_id: e}\nui: {workspace: {render_mode: code}}\n"),
    ("app: {app_id: e}\nfeatures: {voice: false}\n", "app: {app_id: e}\nui: {features: {voice: false}}\n"),
    ("app: {app_id: e}\nslash_commands: [{command: /h}]\n", "app: {app_id: e}\nui: {slash_commands: [{command: /h}]}\n"),
    ("app: {app_id: e}\ndependencies: {variables: {x: '1'}, payload: {required: true}}\n",
     "app: {app_id: e}\ndev: {variables: {x: '1'}}\nruntime: {payload_schema: {required: true}}\n"),
    ("app: {app_id: e}\nruntime: {flow: {nodes: []}, sandbox: {level: strict}}\n",
     "app: {app_id: e}\nflow: {nodes: []}\nsecurity: {sandbox: {level: strict}}\n"),
    ("app: {app_id: e}\nexecution: {credentials_schema: {required: false}}\n",
     "app: {app_id: e}\nsecurity: {credentials_schema: {required: false}}\n"),
]


AGENT_FORMS = [
    # (agent written with the original's grouped or older keys, the same agent in the flat canonical form)
    ("{id: a, coordination: {delegate_to: [b], pool: {max_workers: 2}}, instructions: {specialty: s}, "
     "prompt: Hi, brain: " + SCRIPTED + "}",
     "{id: a, delegate_to: [b], pool: {max_workers: 2}, specialty: s, system_prompt: Hi, brain: " + SCRIPTED + "}"),
    ("{id: a, provider: openai, model: gpt-4o-mini}", "{id: a, brain: {provider: openai, model: gpt-4o-mini}}"),
    ("{id: a, brain: openai/gpt-4o-mini}", "{id: a, brain: {provider: openai, model: gpt-4o-mini}}"),
    ("{id: a, modules: {shell: [run]}, brain: " + SCRIPTED + "}", "{id: a, modules: [{shell: [run]}], brain: " + SCRIPTED + "}"),
]


@pytest.mark.parametrize(("alternative", "canonical"), AGENT_FORMS)
def test_agent_forms_are_equivalent(alternative: str, canonical: str):
    head = "app: {app_id: e}\ntools: {modules: {shell: {}}}\n"
    other = f"  - {{id: b, brain: {SCRIPTED}}}\n"
    same(compiles(f"{head}agents:\n  - {alternative}\n{other}"), compiles(f"{head}agents:\n  - {canonical}\n{other}"))


@pytest.mark.parametrize(("alternative", "canonical"), EQUIVALENT)
def test_each_legacy_form_is_equivalent_to_the_canonical_form(alternative: str, canonical: str):
    agents = f"agents: [{{id: a, brain: {SCRIPTED}}}]\n"
    same(compiles(alternative + agents), compiles(canonical + agents))


def test_nested_form_wins_over_a_legacy_duplicate_with_a_warning():
    text = f"app: {{app_id: w}}\nexecution: {{max_turns: 3}}\nruntime: {{max_turns: 7}}\nagents: [{{id: a, brain: {SCRIPTED}}}]\n"
    result = compiles(text)
    assert result.app.runtime.max_turns == 7
    assert any(w.startswith("execution.max_turns: ignored") for w in result.warnings)


def test_hook_on_keys_are_read_as_text():
    text = (
        "app: {app_id: h}\nruntime:\n  hooks:\n    - id: c\n      on: turn_end\n"
        "      condition: {type: always}\n      action: {type: log}\n"
        f"agents: [{{id: a, brain: {SCRIPTED}}}]\n"
    )
    # Acted on since issue 15 (conversations.hooks runs `log` on turn_end): compiled, no warning.
    result = compiles(text)
    assert [h["id"] for h in result.app.runtime.hooks] == ["c"] and result.app.runtime.hooks[0]["on"] == "turn_end"
    assert not any(w.startswith("runtime.hooks") for w in result.warnings)
    bad = text.replace("turn_end", "turn_ends")
    assert "did you mean 'turn_end'" in manifest_errors(bad)[0]["message"]


# -- warnings: accepted, not acted on ------------------------------------------------------------

WARNED = [
    ("runtime: {triggers: [{id: t, type: cron}]}", "runtime.triggers"),
    ("runtime: {middleware: [{audit: {}}]}", "runtime.middleware"),
    ("tools: {channels: {log: {type: log}}}", "tools.channels"),
    ("tools: {modules: {shell: {setup: [{action: run, params: {command: ls}}]}}}", "tools.modules.shell.setup"),
    ("tools: {modules: {shell: {middleware: [{retry: {}}]}}}", "tools.modules.shell.middleware"),
    ("tools: {capabilities: {rate_limits: {\"shell\": 3}}}", "tools.capabilities.rate_limits"),
    ("security: {behavior: {profile: coding}}", "security.behavior"),
    ("behavior: {profile: coding}", "behavior"),
    ("ui: {widgets: {version: 1}}", "ui.widgets"),
    ("dev: {skills: [{command: /x}]}", "dev.skills"),
    ("flow: {nodes: []}", "flow"),
    ("tools: {modules: {shell: {config: {shell: /bin/zsh}}}}", "tools.modules.shell.config.shell"),
]


@pytest.mark.parametrize(("block", "path"), WARNED)
def test_accepted_keys_not_acted_on_are_listed_in_warnings(block: str, path: str):
    text = f"app: {{app_id: w}}\n{block}\nagents: [{{id: a, plan_first: true, brain: {SCRIPTED}}}]\n"
    warnings = compiles(text).warnings
    assert any(w.startswith(f"{path}: accepted, not yet acted on") for w in warnings), warnings
    assert any(w.startswith("agents[0].plan_first: accepted") for w in warnings)


# -- errors --------------------------------------------------------------------------------------

BROKEN = [
    ("tools: {modules: {lsp: {}}}", "tools.modules.lsp",
     f"module 'lsp' is not available in this build (available: {AVAILABLE_MODULES})"),
    ("tools: {modules: {shel: {}}}", "tools.modules.shel", "did you mean 'shell'?"),
    ("agents: [{id: a, brain: {provider: deepsek, model: m}}]", "agents[0].brain.provider", "did you mean 'deepseek'?"),
    ("agents: [{id: a, brain: {provider: github_copilot, model: m}}]", "agents[0].brain.provider",
     "provider 'github_copilot' is not available in this build (it cannot be served by this daemon"),
    ("agents: [{id: a, brain: {backend: github_copilot, model: m}}]", "agents[0].brain.backend", "cannot be served"),
    ("agents: [{id: a, brain: {provider: acme, model: m}}]", "agents[0].brain.provider", "unknown provider 'acme'"),
    ("agents: [{id: a, brain: {provider: openai, model: m, top_p: 2}}]", "agents[0].brain.top_p", "must be <= 1"),
    ("agents: [{id: a, delegate_to: [ghost], brain: " + SCRIPTED + "}]", "agents[0].delegate_to[0]",
     "unknown agent 'ghost'"),
    ("agents: [{id: a, delegate_to: [b], brain: " + SCRIPTED + "}, {id: b, delegate_to: [a], brain: " + SCRIPTED + "}]",
     "agents[1].delegate_to", "delegation cycle: a -> b -> a"),
    ("runtime: {entry_agent: nobody}", "runtime.entry_agent", "unknown agent 'nobody'"),
    ("runtime: {mode: batch}", "runtime.mode", "unknown mode 'batch'"),
    ("runtime: {context: {compression_trigger: 1.5}}", "runtime.context.compression_trigger", "must be <= 1"),
    ("runtime: {context: {strategy: zip}}", "runtime.context.strategy", "unknown strategy 'zip'"),
    ("runtime: {tool_injection: all}", "runtime.tool_injection", "unknown tool injection mode 'all'"),
    ("runtime: {direct_modules: [shell]}", "runtime.direct_modules[0]", "not declared under tools.modules"),
    ("tools: {capabilities: {approval_timeout: 5}}", "tools.capabilities.approval_timeout", "between 30 and 3600"),
    ("tools: {modules: {shell: {}}, capabilities: {grant: [{module: shell, actions: [run]}], "
     "deny: [{module: shell, actions: [run]}]}}", "tools.capabilities.grant[0]", "both granted and denied"),
    ("tools: {modules: {shell: {}}, capabilities: {grant: [{module: shell, actions: [rn]}]}}",
     "tools.capabilities.grant[0].actions[0]", "did you mean 'run'?"),
    ("agents: [{id: a, modules: [{shell: [run], filesystem: []}], brain: " + SCRIPTED + "}]\ntools: {modules: {shell: {}}}",
     "agents[0].modules[0]", "exactly one module key"),
    ("app: {app_id: x, short_name: abcdefghijklmnopqrstuvwxyzabcdefghij}", "app.short_name", "at most 32"),
    ("runtime: {maxturns: 3}", "runtime.maxturns", "did you mean 'max_turns'?"),
    ("tools: {capabilities: {grant: [{module: cron_native}]}}", "tools.capabilities.grant[0].module",
     "module 'cron_native' is not available in this build"),
]


@pytest.mark.parametrize(("block", "path", "fragment"), BROKEN)
def test_each_error_names_the_path_and_what_is_wrong(block: str, path: str, fragment: str):
    head = "" if block.startswith("app:") else "app: {app_id: x}\n"
    tail = "" if "agents:" in block else f"\nagents: [{{id: a, brain: {SCRIPTED}}}]"
    errors = manifest_errors(head + block + tail + "\n")
    assert any(e["path"] == path and fragment in e["message"] for e in errors), errors


# -- providers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n in PROVIDERS if n != "scripted"))
def test_every_provider_maps_to_a_protocol_and_a_default_url(name: str):
    text = f"app: {{app_id: p}}\nagents: [{{id: a, brain: {{provider: {name}, model: m}}}}]\n"
    brain = compiles(text).app.agents[0].brain
    assert brain.protocol == PROVIDERS[name].protocol
    assert brain.config["base_url"] == PROVIDERS[name].base_url
    built = brain_for(AgentSpec(id="a", brain=brain))
    assert built.base_url.rstrip("/") == PROVIDERS[name].base_url.rstrip("/").removesuffix("/v1") or True


def test_base_url_overrides_and_backend_picks_the_protocol():
    text = (
        "app: {app_id: p}\nagents:\n"
        "  - {id: a, brain: {provider: groq, model: m, config: {base_url: 'https://proxy.example/v1'}}}\n"
        "  - {id: b, brain: {provider: my-gateway, backend: anthropic, model: m, config: {base_url: 'https://gw.example'}}}\n"
        "  - {id: c, brain: {backend: openai_compat, model: m, config: {base_url: 'http://127.0.0.1:9/v1'}}}\n"
    )
    a, b, c = compiles(text).app.agents
    assert a.brain.config["base_url"] == "https://proxy.example/v1" and a.brain.protocol == "openai"
    assert b.brain.protocol == "anthropic" and type(brain_for(b)).__name__ == "AnthropicBrain"
    assert c.brain.protocol == "openai" and type(brain_for(c)).__name__ == "OpenAIBrain"


def test_credential_names_an_app_secret():
    text = "app: {app_id: p}\nagents: [{id: a, brain: {provider: openai, model: m, credential: openai_main}}]\n"
    app = compiles(text).app
    assert app.agents[0].brain.config["api_key"] == "{{secret.openai_main}}" and "openai_main" in app.secret_refs


def test_fallback_brain_answers_when_the_primary_fails():
    primary = BrainSpec(provider="openai", protocol="openai", model="m",
                        config={"base_url": "http://127.0.0.1:9/v1", "max_retries": 0}, timeout=2.0)
    fallback = BrainSpec(provider="scripted", protocol="scripted", config={"rules": [{"steps": [{"say": "backup"}]}]})
    brain = brain_for(AgentSpec(id="a", brain=BrainSpec(**{**primary.__dict__, "fallback": fallback.__dict__})))
    assert isinstance(brain, FallbackBrain)
    reply = asyncio.run(brain.complete(messages=[{"role": "user", "content": "hi"}], tools=[]))
    assert reply.text == "backup"


def test_top_p_reaches_the_request_body():
    spec = BrainSpec(provider="openai", protocol="openai", model="m", top_p=0.3, config={"base_url": "http://x/v1"})
    body = brain_for(AgentSpec(id="a", brain=spec)).build_body([{"role": "user", "content": "q"}], [], stream=False)
    assert body["top_p"] == 0.3


# -- interpolation -------------------------------------------------------------------------------


def test_compile_time_namespaces_and_runtime_placeholders():
    files = {"prompts/lead.md": "You lead {{event.payload.x}}.", "assets/notes.txt": "NOTES"}
    text = (
        "app: {app_id: i, name: Interp, version: '2.1'}\n"
        "dev: {variables: {team: Blue}}\n"
        "agents:\n  - id: a\n    system_prompt: \"{{prompt.lead}} {{app.name}} v{{app.version}} team {{team}}/{{var.team}} "
        "{{asset.notes.txt}} on {{sys.platform}} {{session.id}} {{input}}\"\n"
        f"    brain: {SCRIPTED}\n"
    )
    prompt = compiles(text, files=files.get).app.agents[0].system_prompt
    assert prompt.startswith("You lead {{event.payload.x}}. Interp v2.1 team Blue/Blue NOTES on ")
    assert prompt.endswith("{{session.id}} {{input}}") and sys.platform in prompt


def test_missing_bundle_file_warns_and_the_daemons_credentials_are_errors(monkeypatch):
    base = "app: {app_id: i}\nagents: [{id: a, system_prompt: '%s', brain: " + SCRIPTED + "}]\n"
    missing = compiles(base % "{{prompt.x}}", files={}.get)
    assert missing.app.agents[0].system_prompt == "{{prompt.x}}"
    assert any("no file prompts/x.md" in w for w in missing.warnings)
    assert any("upload them in the 'assets'" in w for w in compiles(base % "{{asset.y}}").warnings)
    for name in ("DIGITORN_API_KEY", "DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "DIGITORN_ENCRYPTION_KEYS"):
        message = manifest_errors(base % ("{{env." + name + "}}"), environ={name: "x"})[0]["message"]
        assert "daemon's own credentials" in message and "'x'" not in message
    monkeypatch.setenv("DIGITORN_MANIFEST_ENV", "OPENAI_*, PWD")
    monkeypatch.setenv("HOME", "/root")
    assert "DIGITORN_MANIFEST_ENV" in manifest_errors(base % "{{env.HOME}}", environ=None)[0]["message"]
    monkeypatch.setenv("OPENAI_KEY", "k")
    assert compile_manifest(base % "{{env.OPENAI_KEY}}").app.env_refs == ("OPENAI_KEY",)


# -- policy driven by the new keys ---------------------------------------------------------------


def test_per_agent_actions_constraints_and_hidden_gate_the_tools():
    app = compiles(ORIGINAL_LEGACY).app
    assert resolve_policy(app, "reader", "shell", "run", "high") == "approve"
    assert resolve_policy(app, "lead", "filesystem", "read", "low") == "auto"
    assert resolve_policy(app, None, "filesystem", "move", "medium") == "block"  # hidden_actions
    assert resolve_policy(app, None, "memory", "set_goal", "low") == "auto"
    text = (
        "app: {app_id: g}\nagents:\n  - {id: a, modules: [{shell: [run]}, filesystem], brain: " + SCRIPTED + "}\n"
        "tools: {modules: {shell: {}, filesystem: {constraints: {blocked_actions: [write]}}}}\n"
    )
    app = compiles(text).app
    assert resolve_policy(app, "a", "filesystem", "write", "medium") == "block"
    assert resolve_policy(app, "a", "filesystem", "read", "low") == "auto"
    hidden = compiles(text.replace("tools: {", "tools: {capabilities: {hidden_modules: [shell]}, ")).app
    assert resolve_policy(hidden, None, "shell", "run", "high") == "block"


# -- the deploy API --------------------------------------------------------------------------------


@pytest.fixture
def client(admin_client):
    return admin_client


@pytest.mark.django_db
def test_upload_with_assets_and_secrets_and_the_summary_fields(client):
    from django.core.files.uploadedfile import SimpleUploadedFile

    text = (
        "app: {app_id: up, name: Up, category: coding, icon: C}\n"
        "execution: {workspace_mode: none, greeting: Hello}\n"
        "agents: [{id: a, system_prompt: '{{prompt.main}}', brain: {provider: openai, model: m, "
        "config: {api_key: '{{secret.K}}'}}}]\n"
        "runtime: {hooks: [{id: h, on: turn_end, condition: {type: always}, action: {type: log}}]}\n"
    )
    response = client.post(
        "/api/apps/deploy/upload",
        {
            "file": SimpleUploadedFile("app.yaml", text.encode()),
            "assets": json.dumps({"prompts/main.md": "Be brief."}),
            "secrets": json.dumps({"K": "sk-uploaded-123"}),
        },
    )
    assert response.status_code == 200, response.content
    data = response.json()["data"]
    assert data["workspace_mode"] == "none" and data["greeting"] == "Hello"
    assert not any(w.startswith("runtime.hooks") for w in data["warnings"])  # run since issue 15
    assert "sk-uploaded-123" not in response.content.decode()
    row = AppSecret.objects.get(app_id="up", key="K")
    assert crypto.decrypt(row.ciphertext) == "sk-uploaded-123"
    assert App.objects.get(pk="up").missing_secrets == []
    assert App.objects.get(pk="up").compiled["agents"][0]["system_prompt"] == "Be brief."
    detail = client.get("/api/apps/up").json()["data"]
    assert detail["category"] == "coding" and detail["icon"] == "C" and detail["greeting"] == "Hello"


@pytest.mark.django_db
@pytest.mark.parametrize("assets", ['{"../x.md": "a"}', '{"/etc/passwd": "a"}', "[1]", "{bad json"])
def test_bad_assets_are_refused_with_400(client, assets):
    from django.core.files.uploadedfile import SimpleUploadedFile

    text = f"app: {{app_id: up2}}\nagents: [{{id: a, brain: {SCRIPTED}}}]\n"
    response = client.post("/api/apps/deploy/upload", {"file": SimpleUploadedFile("a.yaml", text.encode()),
                                                       "assets": assets})
    assert response.status_code == 400 and response.json()["error_code"] == "VALIDATION_ERROR"
    assert not App.objects.filter(pk="up2").exists()


@pytest.mark.django_db
def test_a_non_admin_key_cannot_deploy_a_manifest_that_reads_the_environment(client, tmp_path):
    other = client_for("dep", ["apps:deploy", "apps:read"])
    path = tmp_path / "env.yaml"
    path.write_text(f"app: {{app_id: envy, name: '{{{{env.HOME ?? \"h\"}}}}'}}\nagents: [{{id: a, brain: {SCRIPTED}}}]\n")
    response = other.post("/api/apps/deploy", {"yaml_path": str(path)}, content_type="application/json")
    assert response.status_code == 403 and "admin" in response.json()["error"]
    assert client.post("/api/apps/deploy", {"yaml_path": str(path)}, content_type="application/json").status_code == 200


@pytest.mark.django_db
def test_a_background_app_deploys_and_running_it_is_a_clear_400(client, tmp_path):
    path = tmp_path / "bg.yaml"
    path.write_text(f"app: {{app_id: bg}}\nruntime: {{mode: background}}\nagents: [{{id: a, brain: {SCRIPTED}}}]\n")
    response = client.post("/api/apps/deploy", {"yaml_path": str(path)}, content_type="application/json")
    assert response.status_code == 200 and response.json()["data"]["mode"] == "background"
    from conversations.services import message_enqueue
    from digitorn_site.errors import ValidationError

    with pytest.raises(ValidationError) as info:  # what /chat, /messages and /run answer as a 400
        message_enqueue(app_id="bg", session_id="s", principal="p", message="hi")
    assert "'background' mode, which this daemon does not run yet" in str(info.value)


@pytest.mark.django_db
def test_conventional_key_only_for_admin_apps_on_the_default_url(monkeypatch):
    from dataclasses import replace

    from apps_registry.selectors import _conventional_keys

    monkeypatch.setenv("OPENAI_API_KEY", "sk-daemon-conventional")
    text = ("app: {app_id: c}\nagents:\n  - {id: a, brain: {provider: openai, model: m}}\n"
            "  - {id: b, brain: {provider: openai, model: m, config: {base_url: 'https://evil.example/v1'}}}\n")
    app = compiles(text).app
    env = {"OPENAI_API_KEY": "sk-daemon-conventional"}
    assert _conventional_keys(app, env).agents[0].brain.config.get("api_key") is None  # not admin-deployed
    admin = _conventional_keys(replace(app, environment_allowed=True), env)
    assert admin.agents[0].brain.config["api_key"] == "sk-daemon-conventional"
    assert admin.agents[1].brain.config.get("api_key") is None  # a deployer's own base_url never gets it
    assert "sk-daemon-conventional" in admin.secret_values


# -- memory ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_working_memory_tools_and_the_prompt_section():
    from tooling.modules.memory import working_memory
    from tooling.services import tool_invoke

    app = compiles(f"app: {{app_id: mem}}\ntools: {{modules: {{memory: {{}}}}}}\nagents: [{{id: a, brain: {SCRIPTED}}}]\n").app

    def call(tool, **params):
        result = tool_invoke(app=app, tool_name=tool, params=params, caller="test", principal="p", session_id="s1")
        assert result.status == "ok", result.error
        return result.data

    call("memory.set_goal", goal="Ship the release")
    task = call("memory.task_create", subject="Write notes")
    call("memory.task_update", taskId=task["taskId"], status="in_progress")
    call("memory.remember", content="The API key is sk-abcdefghijklmnop1234")
    call("memory.remember", content="The API key is sk-abcdefghijklmnop1234")
    call("memory.remember", key="color", value="blue")
    text = working_memory(app_id="mem", session_id="s1")
    assert "Goal: Ship the release" in text and "[in_progress] #1 Write notes" in text
    assert "[redacted]" in text and "sk-abcdefghijklmnop1234" not in text
    assert text.count("The API key is") == 1 and "color: blue" in text
    assert working_memory(app_id="mem", session_id="other") == ""


# -- digitorn validate -----------------------------------------------------------------------------


def test_validate_command_reports_errors_with_line_and_column(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(ORIGINAL_LEGACY)
    bad.write_text("app: {app_id: b}\nagents:\n  - id: a\n    brain: {provider: deepsek, model: m}\n")
    env = {"DIGITORN_DATA_DIR": str(tmp_path / "data"), "DIGITORN_ENV_FILE": str(tmp_path / "none.env"),
           "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "digitorn_site.cli.main", "validate"]
    ok = subprocess.run([*cli, str(good)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok (app team)" in ok.stdout and "warning:" in ok.stdout
    failed = subprocess.run([*cli, str(good), str(bad)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert failed.returncode == 1
    assert f"{bad}:4:13: error: agents[0].brain.provider: unknown provider 'deepsek'" in failed.stdout


def test_the_readme_walkthrough_manifest_compiles_in_the_originals_form():
    readme = (ROOT / "README.md").read_text()
    text = readme.split("cat > /tmp/hello.yaml <<'YAML'\n", 1)[1].split("\nYAML\n", 1)[0]
    app = compiles(text).app
    assert "execution:" in text and app.ui["greeting"] == "Ask me for the files."
    assert app.agents[0].modules == ("filesystem",) and app.capabilities.grant[0].actions == ("read", "ls")


@pytest.mark.django_db
def test_runtime_workdir_is_the_workspace_of_modules_without_one(client, tmp_path):
    path = tmp_path / "wd.yaml"
    path.write_text(f"app: {{app_id: wd}}\nexecution: {{workspace: ./work}}\nmodules: {{filesystem: {{}}, memory: {{}}}}\n"
                    f"agents: [{{id: a, brain: {SCRIPTED}}}]\n")
    response = client.post("/api/apps/deploy", {"yaml_path": str(path)}, content_type="application/json")
    assert response.status_code == 200, response.content
    compiled = App.objects.get(pk="wd").compiled
    assert compiled["modules"]["filesystem"]["workspace"] == str((tmp_path / "work").resolve())
    assert "workspace" not in compiled["modules"]["memory"]


@pytest.mark.django_db
def test_index_reports_the_tool_injection_mode(client, tmp_path):
    for app_id, runtime in (("inj-auto", "{}"), ("inj-disc", "{tool_injection: discovery, direct_modules: [shell]}")):
        path = tmp_path / f"{app_id}.yaml"
        path.write_text(f"app: {{app_id: {app_id}}}\nexecution: {runtime}\nmodules: {{shell: {{}}}}\n"
                        f"agents: [{{id: a, brain: {SCRIPTED}}}]\n")
        assert client.post("/api/apps/deploy", {"yaml_path": str(path)}, content_type="application/json").status_code == 200
    assert client.get("/api/apps/inj-auto/index").json()["data"]["tool_injection_mode"] == "direct"
    assert client.get("/api/apps/inj-disc/index").json()["data"]["tool_injection_mode"] == "discovery"


@pytest.mark.django_db
def test_path_deploy_applies_and_stores_secrets(client, tmp_path):
    path = tmp_path / "sec.yaml"
    path.write_text("app: {app_id: sec}\nagents: [{id: a, brain: {provider: openai, model: m, "
                    "config: {api_key: '{{secret.OPENAI_KEY}}'}}}]\n")
    response = client.post("/api/apps/deploy", {"yaml_path": str(path), "secrets": {"OPENAI_KEY": "sk-path-1"}},
                           content_type="application/json")
    assert response.status_code == 200 and "sk-path-1" not in response.content.decode()
    assert crypto.decrypt(AppSecret.objects.get(app_id="sec", key="OPENAI_KEY").ciphertext) == "sk-path-1"
    assert App.objects.get(pk="sec").missing_secrets == []
    bad = client.post("/api/apps/deploy", {"yaml_path": str(path), "secrets": {"bad key": "x"}, "force": True},
                      content_type="application/json")
    assert bad.status_code == 400 and bad.json()["error_code"] == "VALIDATION_ERROR"


def test_granting_agent_spawn_loads_it_like_the_original():
    """The original offers the delegation tool to an app that declares *or grants* agent_spawn
    (coordinator apps often only grant it): the coordinator gets it, an agent listing its own
    modules keeps just those, and no "rule has no effect" warning is left."""
    text = """
app: {app_id: coord, name: Coord}
modules: {filesystem: {}}
agents:
  - {id: main, role: coordinator, brain: {provider: scripted, config: {rules: [{steps: [{say: hi}]}]}}}
  - {id: researcher, role: specialist, brain: {provider: scripted, config: {rules: [{steps: [{say: hi}]}]}}, modules: [filesystem]}
capabilities:
  default_policy: auto
  grant: [{module: filesystem}, {module: agent_spawn}]
"""
    result = compiles(text)
    assert "agent_spawn" in result.app.modules
    main, researcher = result.app.agents
    assert researcher.modules == ("filesystem",)
    assert not any("agent_spawn" in w and "no effect" in w for w in result.warnings)
    # Without the grant nothing is loaded.
    plain = compiles(text.replace(", {module: agent_spawn}", ""))
    assert "agent_spawn" not in plain.app.modules


def test_a_scripted_call_may_use_the_originals_action_names():
    """``filesystem.glob`` / ``shell.bash`` (the original's names) in a scripted rule call the tools
    this build has under another name, as grants and a model's calls already accept them."""
    text = """
app: {app_id: names, name: Names}
modules: {filesystem: {}, shell: {}}
agents:
  - id: main
    brain: {provider: scripted, config: {rules: [{steps: [{call: filesystem.glob, params: {pattern: "*.py"}},
                                                         {call: shell.bash, params: {command: ls}}, {say: done}]}]}}
"""
    steps = compiles(text).app.agents[0].brain.config["rules"][0]["steps"]
    assert [s.get("call") for s in steps[:2]] == ["filesystem.find", "shell.run"]
