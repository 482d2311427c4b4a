"""Forms found in the originals' real manifests (the Python original's examples, the Go port's apps)
that this build refused although it has everything they use, and the clean report of what a
manifest needs and this build lacks: one error per missing module or provider, nothing cascading
from it. The manifests are written for these tests, modelled on the real ones' shapes."""

from __future__ import annotations

import json

import pytest

from apps_registry.models import App
from tests.helpers import compiles, manifest_errors

BRAIN = "{provider: openai, model: gpt-4o-mini, config: {api_key: '{{secret.K}}'}}"


# -- an agent's own module list names a module the app does not declare --------------------------

AGENT_LISTS_UNDECLARED = f"""
schema_version: 2
app: {{app_id: reports, name: Reports}}
agents:
  - id: writer
    brain: {BRAIN}
    modules: [memory, filesystem]
  - id: chatter
    brain: {BRAIN}
tools:
  modules:
    memory: {{}}
"""


def test_a_module_only_an_agent_lists_is_loaded_for_that_agent_with_a_warning():
    result = compiles(AGENT_LISTS_UNDECLARED)
    app = result.app
    assert "filesystem" in app.modules
    writer, chatter = app.agents
    assert set(writer.modules) == {"memory", "filesystem"}
    # The agent without a list of its own keeps what the app declared: it does not gain filesystem.
    assert chatter.modules == ("memory",)
    assert any(w.startswith("agents[0].modules[1]: module 'filesystem' is not declared under tools.modules")
               for w in result.warnings), result.warnings


def test_a_module_this_build_lacks_listed_only_by_an_agent_is_one_clear_error():
    text = AGENT_LISTS_UNDECLARED.replace("[memory, filesystem]", "[memory, scheduler]")
    errors = manifest_errors(text)
    assert [e["path"] for e in errors] == ["agents[0].modules[1]"], errors
    assert errors[0]["message"].startswith("module 'scheduler' is not available in this build (available: ")


def test_a_module_this_build_lacks_named_only_in_capabilities_is_one_clear_error():
    text = (
        f"app: {{app_id: caps}}\nagents: [{{id: a, brain: {BRAIN}}}]\n"
        "tools: {modules: {memory: {}}, capabilities: {grant: [{module: memory}, {module: lsp, actions: [diagnostics]},"
        " {module: lsp}]}}\n"
    )
    errors = manifest_errors(text)
    assert [e["path"] for e in errors] == ["tools.capabilities.grant[1].module"], errors
    assert "module 'lsp' is not available in this build" in errors[0]["message"]


# -- the MCP module's shorthand list of catalog servers --------------------------------------------

def test_mcp_servers_written_as_a_list_of_names_is_the_mapping_without_settings():
    head = f"app: {{app_id: gh}}\nagents: [{{id: a, brain: {BRAIN}}}]\n"
    listed = compiles(head + "tools: {modules: {mcp: {config: {servers: [github, memory]}}}}\n")
    mapped = compiles(head + "tools: {modules: {mcp: {config: {servers: {github: {}, memory: {}}}}}}\n")
    assert listed.app.modules["mcp"] == mapped.app.modules["mcp"]
    assert set(listed.app.modules["mcp"]["servers"]) == {"github", "memory"}


def test_mcp_servers_listing_a_name_twice_is_still_refused():
    head = f"app: {{app_id: gh2}}\nagents: [{{id: a, brain: {BRAIN}}}]\n"
    errors = manifest_errors(head + "tools: {modules: {mcp: {config: {servers: [github, github]}}}}\n")
    assert errors and errors[0]["path"].startswith("tools.modules.mcp.config.servers"), errors


# -- a hook whose `on:` PyYAML wrote back as `true:` ---------------------------------------------

def test_a_hook_keyed_true_is_the_hook_keyed_on():
    hook = "{{id: lint, {key}: tool_end, condition: {{type: tool_match, tools: [filesystem.edit]}}, action: {{type: log}}}}"
    base = f"app: {{app_id: hk}}\nagents: [{{id: a, brain: {BRAIN}}}]\nruntime:\n  hooks:\n  - "
    as_true = compiles(base + hook.format(key="true") + "\n")
    as_on = compiles(base + hook.format(key="on") + "\n")
    assert as_true.app.to_dict()["runtime"] == as_on.app.to_dict()["runtime"]
    errors = manifest_errors(base + hook.format(key="true").replace("tool_end", "tool_ending") + "\n")
    assert errors[0]["path"] == "runtime.hooks[0].on" and "unknown hook event 'tool_ending'" in errors[0]["message"]


# -- an unset {{env.X}} where a module setting has a format ----------------------------------------

MCP_URL_FROM_ENV = f"""
app: {{app_id: zap}}
agents: [{{id: a, brain: {BRAIN}}}]
tools:
  modules:
    mcp:
      config:
        servers:
          mail:
            transport: streamable_http
            url: "{{{{env.ZAP_MCP_URL}}}}"
"""


def test_an_unset_env_reference_in_a_formatted_setting_is_a_warning_not_an_error():
    result = compiles(MCP_URL_FROM_ENV)
    assert any("ZAP_MCP_URL is not set" in w for w in result.warnings), result.warnings
    # Set to a value of the wrong form, the format is still checked.
    errors = manifest_errors(MCP_URL_FROM_ENV, environ={"ZAP_MCP_URL": "not-a-url"})
    assert any(e["path"] == "tools.modules.mcp.config.servers.mail.url" for e in errors), errors


# -- a provider this build lacks: one error per brain ------------------------------------------------

def test_a_provider_this_build_lacks_is_one_error_per_brain_even_with_its_backend_and_no_url():
    text = (
        "app: {app_id: cop}\nagents:\n"
        "- {id: a, brain: {provider: github_copilot, backend: github_copilot, model: gpt-5-mini,"
        " config: {api_key: '{{secret.T}}'}}}\n"
        "- {id: b, brain: {provider: openai, model: m, config: {api_key: x},"
        " fallback: {provider: github_copilot, backend: github_copilot, model: m, config: {api_key: x}}}}\n"
    )
    errors = manifest_errors(text)
    assert [e["path"] for e in errors] == ["agents[0].brain.provider", "agents[1].brain.fallback.provider"], errors
    assert all(e["message"].startswith("provider 'github_copilot' is not available in this build") for e in errors)


def test_a_backend_this_build_lacks_under_a_known_provider_is_one_error():
    errors = manifest_errors("app: {app_id: cop2}\nagents: [{id: a, brain: {provider: openai, backend: github_copilot,"
                             " model: m, config: {api_key: x}}}]\n")
    assert [e["path"] for e in errors] == ["agents[0].brain.backend"], errors
    assert "backend 'github_copilot' is not available in this build" in errors[0]["message"]


# -- what a lacking module's own block says is not reported besides the lack ----------------------------

def test_a_lacking_module_is_one_error_whatever_its_settings_say():
    text = (
        f"app: {{app_id: sched}}\nagents: [{{id: a, brain: {BRAIN}}}]\n"
        "tools:\n  modules:\n    scheduler:\n      config:\n"
        "        ops_token: '{{env.DIGITORN_API_KEY}}'\n        bad: '{{sys.nope}}'\n"
    )
    errors = manifest_errors(text)
    assert [e["path"] for e in errors] == ["tools.modules.scheduler"], errors
    assert "module 'scheduler' is not available in this build" in errors[0]["message"]
    # Declared by a module this build has, the same reference is still refused.
    errors = manifest_errors(text.replace("scheduler:", "http:"))
    assert any("DIGITORN_API_KEY" in e["message"] for e in errors), errors


# -- grants naming the original's actions of git / web / workspace ------------------------------------------

def test_grants_of_actions_the_originals_git_has_are_warnings_and_typos_still_errors():
    head = f"app: {{app_id: g}}\nagents: [{{id: a, brain: {BRAIN}}}]\n"
    text = head + ("tools: {modules: {git: {}, web: {}}, capabilities: {grant: [{module: git, actions: "
                   "[status, branch_list, branch_create, stash, pull]}, {module: web, actions: [search, extract]}],"
                   " approve: [{module: git, actions: [push, pr_create]}]}}\n")
    result = compiles(text)
    assert any("has no action 'stash'" in w for w in result.warnings), result.warnings
    errors = manifest_errors(text.replace("stash", "statsu"))
    assert errors[0]["path"] == "tools.capabilities.grant[0].actions[3]"
    assert "did you mean 'status'?" in errors[0]["message"]


# -- the HTTP upload agrees --------------------------------------------------------------------------------


@pytest.fixture
def client(admin_client):
    return admin_client


def _upload(client, text: str):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post("/api/apps/deploy/upload", {"file": SimpleUploadedFile("app.yaml", text.encode())})


@pytest.mark.django_db
def test_upload_deploys_a_manifest_using_these_forms_as_is(client):
    text = AGENT_LISTS_UNDECLARED.replace("app_id: reports", "app_id: up-real") + (
        "    mcp: {config: {servers: [github]}}\n"
        "runtime:\n  hooks:\n  - {id: h, true: turn_end, condition: {type: always}, action: {type: log}}\n"
    )
    response = _upload(client, text)
    assert response.status_code == 200, response.content
    compiled = App.objects.get(pk="up-real").compiled
    assert {"memory", "filesystem", "mcp"} <= set(compiled["modules"])


@pytest.mark.django_db
def test_upload_of_a_manifest_needing_what_this_build_lacks_names_each_lack_once(client):
    text = (
        "app: {app_id: up-lack}\n"
        "agents: [{id: a, brain: {provider: github_copilot, model: m, config: {api_key: x}}, modules: [lsp]}]\n"
        "tools: {modules: {channels: {config: {providers: {tick: {adapter: cron}}}}}}\n"
    )
    response = _upload(client, text)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["success"] is False and body["error_code"] == "INVALID_MANIFEST", body
    errors = body["details"]["errors"]
    assert sorted(e["path"] for e in errors) == ["agents[0].brain.provider", "agents[0].modules[0]",
                                                 "tools.modules.channels"], json.dumps(errors)
    assert all("is not available in this build" in e["message"] for e in errors)
    assert not App.objects.filter(pk="up-lack").exists()


def test_an_unset_env_reference_as_a_brain_base_url_is_a_warning_not_an_error():
    text = ("app: {app_id: llm-env}\nagents: [{id: a, brain: {provider: ollama, model: m,"
            " config: {base_url: '{{env.MY_LLM_URL}}', api_key: x}}}]\n")
    result = compiles(text)
    assert any("MY_LLM_URL is not set" in w for w in result.warnings), result.warnings
    errors = manifest_errors(text, environ={"MY_LLM_URL": "localhost:11434"})
    assert errors[0]["path"] == "agents[0].brain.config.base_url" and "http:// or https://" in errors[0]["message"]
