"""Validate the canonical manifest tree and build the :class:`CompiledApp`.

Every check reports to :class:`Problems` with the YAML path and keeps going, so one compile lists
every problem it can find. Values arrive already interpolated; a string that came from an
``{{env.X}}`` template may be read as a number or boolean where one is expected (see
``interpolation``), any other string may not: ``timeout: "30"`` is an error that says to drop the
quotes, because silently accepting it hides a typo in a value that was meant to be text.

The language is the original Digitorn's (its ``core/app/schema.py``): every key it accepts is
accepted here. A key this daemon honours is checked and compiled; a key it accepts but does not act
on yet is listed in the warnings (``NOT_ACTED``), never dropped silently; a key the original does not
know is an error with a did-you-mean.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jsonschema

from .compiled import (
    SECRET_MARKER,
    AgentSpec,
    BrainSpec,
    Capabilities,
    CapabilityRule,
    CompiledApp,
    Runtime,
)
from .interpolation import describe_template
from .legacy import CANONICAL_KEYS, EXTRA_TOP_KEYS, LEGACY_KEYS
from .problems import Path, Problems, describe_type, did_you_mean
from .providers import BACKENDS, PROVIDERS, UNSUPPORTED_BACKENDS, UNSUPPORTED_PROVIDERS, provider_named

APP_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
AGENT_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,63}$")
RESERVED_APP_IDS = frozenset({"deploy"})  # /api/apps/deploy is a route, not an app
MODES = ("conversation", "one_shot", "background", "pipeline")
MODEL_REQUIRED = "e.g. model: gpt-4o-mini"
POLICIES = ("auto", "approve", "block")
RISK_LEVELS = ("low", "medium", "high")
NOT_ACTED = "accepted, not yet acted on by this daemon"
# Modules the original loads by itself (discovery meta-tools, its LLM gateway): declaring them is
# accepted; this daemon provides the discovery meta-tools to every agent already.
SYSTEM_MODULES = ("context_builder", "llm_provider", "index")

APP_DISPLAY_KEYS = (
    "short_name", "author", "tags", "icon", "color", "category", "quick_prompts", "attachments",
    "attachments_mode", "features", "theme",
)
APP_KEYS = ("app_id", "name", "version", "description", "schema_version", *APP_DISPLAY_KEYS)
RUNTIME_HONOURED = (
    "mode", "entry_agent", "max_turns", "timeout", "tool_injection", "direct_modules", "context",
    "workdir", "workdir_mode",
    # this project's own settings
    "approval_timeout", "max_tool_result_chars", "context_window_messages", "session_idle_seconds",
    "rate_limit_rpm",
)
RUNTIME_NOT_ACTED = (
    "modes", "input", "output", "triggers", "session_mode", "max_sessions_per_user",
    "max_concurrent_activations", "payload_schema", "project_memory", "hooks", "watchers", "scheduler",
    "default_channel", "middleware", "pipeline", "max_stop_retries", "workbench", "workbench_max_chars",
    "workbench_reflection", "workbench_error_memory", "mid_turn_messages", "default_mode",
)
RUNTIME_KEYS = (*RUNTIME_HONOURED, *RUNTIME_NOT_ACTED)
INJECTION_MODES = ("direct", "compact_direct", "discovery")
WORKDIR_MODES = ("none", "required", "fixed", "auto")
CONTEXT_KEYS = (
    "max_tokens", "output_reserved", "strategy", "keep_recent", "compression_trigger", "summary_max_tokens",
    "auto_compact", "summary_brain",
)
CONTEXT_STRATEGIES = ("truncate", "summarize")
HOOK_KEYS = ("id", "on", "event", "condition", "action", "cooldown", "max_fires", "priority", "enabled", "timeout", "tags")
HOOK_EVENTS = (
    "turn_start", "turn_end", "tool_start", "tool_end", "pre_tool_use", "post_tool_use", "user_prompt",
    "session_start", "session_end", "pre_compact", "error", "approval_request", "agent_spawn",
    "agent_complete", "activation",
)
# What conversations.hooks acts on (the others are accepted with a warning).
HOOK_EVENTS_FIRED = ("session_start", "turn_start", "user_prompt", "turn_end")
HOOK_ACTIONS_RUN = ("log", "notify", "inject_message")


def _compiled_hook(block: dict[str, Any], on: str) -> dict[str, Any]:
    """A hook as the engine reads it: JSON-safe plain data (the compiled app is stored as JSON)."""

    def number(value: Any, default: float) -> float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

    condition = block.get("condition") if isinstance(block.get("condition"), dict) else {"type": "always"}
    action = block.get("action") if isinstance(block.get("action"), dict) else {"type": "inject_message"}
    return {
        "id": block["id"],
        "on": on,
        "condition": dict(condition),
        "action": dict(action),
        "cooldown": max(number(block.get("cooldown"), 0.0), 0.0),
        "max_fires": int(max(number(block.get("max_fires"), 0), 0)),
        "enabled": block.get("enabled") is not False,
    }


AGENT_HONOURED = ("id", "name", "system_prompt", "brain", "modules", "max_turns", "role", "specialty", "delegate_to")
AGENT_NOT_ACTED = (
    "plan_first", "skills", "capabilities", "pool", "hooks", "context", "max_tool_iterations",
)
AGENT_KEYS = (*AGENT_HONOURED, *AGENT_NOT_ACTED)
BRAIN_HONOURED = (
    "provider", "model", "backend", "temperature", "max_tokens", "top_p", "timeout", "native_tool_use",
    "config", "fallback", "context", "credential",
)
BRAIN_NOT_ACTED = (
    "provider_id", "kind", "models", "vision", "image_generation", "image_detail", "max_images_per_turn",
)
BRAIN_KEYS = (*BRAIN_HONOURED, *BRAIN_NOT_ACTED)
TOOLS_KEYS = ("modules", "capabilities", "channels")
MODULE_BLOCK_KEYS = ("config", "setup", "constraints", "middleware", "credential")
CAPABILITY_KEYS = (
    "default_policy", "max_risk_level", "grant", "approve", "deny", "approval_timeout", "hidden_modules",
    "hidden_actions", "max_data_classification", "rate_limits",
)
RULE_KEYS = ("module", "actions", "tools", "reason")
SECURITY_KEYS = ("behavior", "sandbox", "credentials_schema")
UI_KEYS = (
    "theme", "features", "widgets", "workspace", "slash_commands", "quick_prompts", "greeting", "layout",
    "density", "thinking", "tool_calls", "composer", "visual", "slots", "activity", "tool_renderers",
    "message_actions", "preview",
)
UI_HONOURED = ("greeting", "quick_prompts", "theme", "features")
DEV_KEYS = ("skills", "variables", "include", "allow_user_skills")
DEV_HONOURED = ("variables",)
# Action names the original's modules have had (its generations differ); one this build lacks is a
# warning, never a did-you-mean error.
# The original's action names that this build's modules have under another name: a rule naming one
# covers the same tool (a deny of `shell: [bash]` must block `shell.run`, not match nothing).
ORIGINAL_ACTION_NAMES = {
    "filesystem": {
        "glob": "find", "search_files": "find", "rm": "delete", "delete_file": "delete", "mv": "move",
        "move_file": "move", "cp": "copy", "copy_file": "copy", "exists": "stat", "get_file_info": "stat",
        "read_file": "read", "write_file": "write", "list_directory": "ls", "create_directory": "mkdir",
    },
    "shell": {"bash": "run", "exec": "run", "sh": "run"},
}
# Other names of modules (tooling.registry.MODULE_ALIASES): renamed by the compiler before validation.
MODULE_ALIASES = {"bash": "shell"}

ORIGINAL_ACTIONS = {
    "filesystem": (
        "read", "write", "edit", "ls", "glob", "grep", "mkdir", "rm", "delete", "mv", "cp", "stat", "exists",
        "read_file", "write_file", "append_file", "copy_file", "move_file", "delete_file", "create_directory",
        "list_directory", "search_files", "get_file_info", "create_archive", "extract_archive",
        "compute_checksum", "watch_path",
    ),
    "shell": (
        "exec", "bash", "sh", "run", "background_run", "which", "kill", "ps", "env", "script", "task_status",
        "task_output", "task_wait", "task_list", "task_kill",
    ),
    "memory": (
        "remember", "recall", "forget", "set_goal", "get_goal", "clear_goal", "add_todo", "update_todo",
        "list_todos", "task_create", "task_update", "task_list", "task_get", "add_fact", "list_facts",
        "search", "summarize", "clear", "get", "set", "list",
    ),
    "database": (
        "connect", "disconnect", "query", "execute_query", "fetch_results", "execute", "batch_execute",
        "transaction", "schema", "describe", "describe_table", "get_table_schema", "list_tables", "introspect",
        "sample", "set_policy", "sql", "relations", "browse", "search_data", "bulk_insert",
    ),
    "http": (
        "get", "post", "put", "patch", "delete", "head", "options", "request", "download", "json_api",
        "fetch_page", "download_status", "download_cancel", "download_list",
    ),
    # Seen in the original's and the Go port's manifests (grants of their git, web, workspace, pdf).
    "git": (
        "status", "diff", "log", "blame", "show", "branch", "branch_list", "branch_create", "branch_delete",
        "add", "commit", "checkout", "stash", "tag", "pull", "push", "fetch", "reset", "merge", "rebase",
        "pr_create", "clone", "init", "remote",
    ),
    "web": ("search", "fetch", "extract", "download", "screenshot"),
    "workspace": (
        "write", "read", "edit", "glob", "grep", "delete", "ls", "stat", "mkdir", "tree", "list", "switch",
        "info", "metadata", "set_metadata",
    ),
    "pdf": ("generate", "create", "read", "extract_text", "metadata", "search", "merge", "split"),
    "rag": (
        "query", "multi_query", "sql_query", "search", "ingest", "ingest_text", "ingest_file", "ingest_directory",
        "ingest_database", "list_knowledge_bases", "knowledge_base_stats", "create_knowledge_base",
        "delete_knowledge_base", "list_models", "migrate_embeddings", "clear_cache",
    ),
    "channels": (
        "send_message", "broadcast", "list_providers", "stats", "pause_provider", "resume_provider",
        "simulate_event",
    ),
    "agent_spawn": (
        "agent", "spawn_agent", "agent_wait", "agent_wait_all", "agent_result", "agent_status", "agent_cancel",
        "agent_list", "list_specialists", "run_parallel",
    ),
}
SETTING_TYPO_CUTOFF = 0.85
SCRIPT_RULE_KEYS = ("when", "steps")
STEP_KINDS = ("call", "calls", "say")
# Column widths of the apps table (apps_registry.models.App).
MAX_NAME_CHARS = 200
MAX_VERSION_CHARS = 50

MISSING: Any = object()
# An {{env.X}} left as written because X is unset at compile time (interpolation warns about it).
UNSET_ENV_MARKER = re.compile(r"\{\{\s*env\.[A-Za-z_][A-Za-z0-9_]*\s*\}\}")
_BOOL_WORDS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}

def _get(mapping: Mapping[str, Any] | None, key: str) -> Any:
    """The value, or MISSING when absent or null: null means "use the default" for optional keys."""
    if not mapping:
        return MISSING
    value = mapping.get(key, MISSING)
    return MISSING if value is None else value


class Checker:
    def __init__(
        self,
        problems: Problems,
        templates: Mapping[Path, str],
        catalog: Mapping[str, Sequence[str] | None],
        config_schema: Callable[[str], dict],
        meta_tools: Sequence[str] = (),
    ):
        self.meta_tools = frozenset(meta_tools)
        self.problems = problems
        self.templates = templates
        self.catalog = {
            module: None if actions is None else list(actions) for module, actions in catalog.items()
        }
        self.config_schema = config_schema
        self.unavailable: set[str] = set()  # declared modules this build does not have (reported once)
        self.secret_refs: list[str] = []

    # -- primitives ------------------------------------------------------------------------
    def error(self, path: Path, message: str) -> None:
        self.problems.error(path, message)

    def _type_error(self, path: Path, value: Any, expected: str) -> None:
        got = describe_type(value)
        message = f"must be {expected}, got {got}"
        if isinstance(value, str) and "{{env." in self.templates.get(path, ""):
            message += describe_template(path, self.templates, value)  # never the environment's value
        elif isinstance(value, str):
            message += f" {value!r}"
            if SECRET_MARKER.search(value):
                message += "; {{secret.KEY}} references are only allowed in text values (they are resolved at run time)"
            elif path in self.templates:
                message += describe_template(path, self.templates, value)
            elif expected in ("an integer", "a number") and _is_number(value):
                message += "; remove the quotes"
        elif isinstance(value, bool) and expected.startswith("a string"):
            message += " (YAML reads yes/no/on/off/true/false as booleans); quote it"
        elif isinstance(value, int | float) and expected.startswith("a string"):
            message += f" {value!r}; quote it"
        self.error(path, message)

    def mapping(
        self,
        value: Any,
        path: Path,
        allowed: Sequence[str] | None,
        *,
        required: Mapping[str, str] | None = None,
        what: str = "a mapping",
    ) -> dict[str, Any] | None:
        """The mapping (``{}`` for null), after reporting unknown and missing keys; None if not a mapping."""
        if value is None or value is MISSING:
            value = {}
        if not isinstance(value, dict):
            self._type_error(path, value, what)
            return None
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    self.error((*path, key), f"unknown key; {did_you_mean(key, allowed)}")
        for key, hint in (required or {}).items():
            if _get(value, key) is MISSING:
                self.error((*path, key), f"required{': ' + hint if hint else ''}")
        return value

    def string(self, value: Any, path: Path, *, default: Any = MISSING, max_chars: int | None = None) -> Any:
        if value is MISSING:
            return default
        if not isinstance(value, str):
            self._type_error(path, value, "a string")
            return default
        if max_chars is not None and len(value) > max_chars:
            self.error(path, f"must be at most {max_chars} characters, got {len(value)}")
        return value

    def integer(
        self,
        value: Any,
        path: Path,
        *,
        default: Any = MISSING,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> Any:
        if value is MISSING:
            return default
        if isinstance(value, str) and path in self.templates and not SECRET_MARKER.search(value):
            try:
                value = int(value.strip())
            except ValueError:
                self._type_error(path, value, "an integer")
                return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, float):
            self.error(path, f"must be a whole number, got {value}")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self._type_error(path, value, "an integer")
            return default
        if not self._in_range(value, path, minimum, maximum):
            return default
        return value

    def number(
        self,
        value: Any,
        path: Path,
        *,
        default: Any = MISSING,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
    ) -> Any:
        if value is MISSING:
            return default
        if isinstance(value, str) and path in self.templates and not SECRET_MARKER.search(value):
            try:
                value = float(value.strip())
            except ValueError:
                self._type_error(path, value, "a number")
                return default
            if not math.isfinite(value):
                self.error(path, f"must be a finite number{describe_template(path, self.templates, value)}")
                return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._type_error(path, value, "a number")
            return default
        if above is not None and value <= above:
            self.error(path, f"must be > {above:g}, got {value}")
            return default
        if not self._in_range(value, path, minimum, maximum):
            return default
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float: no bound of ours is that large
            self.error(path, f"must be a number of a sensible size, got {str(value)[:20]}…")
            return default

    def _in_range(self, value: float, path: Path, minimum: float | None, maximum: float | None) -> bool:
        if minimum is not None and value < minimum:
            bound = f"between {minimum:g} and {maximum:g}" if maximum is not None else f">= {minimum:g}"
            self.error(path, f"must be {bound}, got {value}")
            return False
        if maximum is not None and value > maximum:
            self.error(path, f"must be <= {maximum:g}, got {value}")
            return False
        return True

    def choice(
        self, value: Any, path: Path, choices: Sequence[str], *, default: Any = MISSING, what: str = ""
    ) -> Any:
        if value is MISSING:
            return default
        if not isinstance(value, str):
            self._type_error(path, value, "one of " + ", ".join(choices))
            return default
        if value not in choices:
            message = f"unknown {what + ' ' if what else ''}{value!r}; {did_you_mean(value, choices)}"
            if "did you mean" in message:
                message += f" (one of {', '.join(choices)})"
            self.error(path, message)
            return default
        return value


    def warn(self, path: Path, message: str) -> None:
        self.problems.warn(path, message)

    def not_acted(self, block: Mapping[str, Any] | None, path: Path, keys: Sequence[str]) -> None:
        """One warning per accepted key that is set (not null/empty) but not acted on here."""
        if not isinstance(block, dict):
            return
        for key in keys:
            value = block.get(key)
            if value is None or value == [] or value == {} or value == "":
                continue
            self.warn((*path, key), NOT_ACTED)

    def free_block(self, value: Any, path: Path, allowed: Sequence[str], honoured: Sequence[str] = ()) -> dict[str, Any]:
        # Display and security blocks: a key the original does not know is ignored with a warning
        # (this project's earlier manifests kept free-form settings here).
        block = self.mapping(value, path, None)
        if block is None:
            return {}
        for key in block:
            if key not in allowed:
                self.warn((*path, key), f"unknown key, ignored; {did_you_mean(key, allowed)}")
        self.not_acted(block, path, [k for k in allowed if k not in honoured])
        return dict(block)

    # -- blocks ----------------------------------------------------------------------------
    def app(self, top: dict[str, Any]) -> dict[str, Any]:
        path: Path = ("app",)
        raw = top.get("app", MISSING)
        if raw is MISSING:
            self.error(path, "required: the app block, e.g. app: {app_id: my-app, name: My App}")
            return {}
        block = self.mapping(raw, path, APP_KEYS, required={"app_id": "the app's id, e.g. app_id: my-app"})
        if block is None:
            return {}
        out: dict[str, Any] = {}
        app_id = self.string(_get(block, "app_id"), (*path, "app_id"), default=None)
        if app_id is not None:
            if not APP_ID.match(app_id) or ".." in app_id or app_id.endswith("."):
                self.error(
                    (*path, "app_id"),
                    f"{app_id!r} is not a valid app id: use 1-128 letters, digits, '_', '.' or '-', "
                    "starting with a letter or digit",
                )
            elif app_id.lower() in RESERVED_APP_IDS:
                self.error(
                    (*path, "app_id"),
                    f"{app_id!r} is reserved (POST /api/apps/{app_id} is a route of the API); choose another id",
                )
            else:
                out["app_id"] = app_id
        name = self.string(_get(block, "name"), (*path, "name"), default=None, max_chars=MAX_NAME_CHARS)
        out["name"] = name if name else out.get("app_id", "")
        out["version"] = self._version(_get(block, "version"), (*path, "version"))
        out["description"] = self.string(_get(block, "description"), (*path, "description"), default="")
        meta: dict[str, Any] = {"category": "general"}
        for key in ("short_name", "author", "icon", "color", "category"):
            value = self.string(_get(block, key), (*path, key), default=None)
            if value is not None:
                meta[key] = value
        if isinstance(meta.get("short_name"), str) and len(meta["short_name"]) > 32:
            self.error((*path, "short_name"), f"must be at most 32 characters, got {len(meta['short_name'])}")
        tags = _get(block, "tags")
        if tags is not MISSING:
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                self._type_error((*path, "tags"), tags, "a list of strings")
            else:
                meta["tags"] = list(tags)
        prompts = _get(block, "quick_prompts")
        if prompts is not MISSING:
            meta["quick_prompts"] = self._quick_prompts(prompts, (*path, "quick_prompts"))
        for key in ("attachments", "attachments_mode"):
            if _get(block, key) is not MISSING:
                meta[key] = block[key]
        out["meta"] = meta
        return out

    def _quick_prompts(self, raw: Any, path: Path) -> list:
        if not isinstance(raw, list):
            self._type_error(path, raw, "a list of {label, message, icon}")
            return []
        out = []
        for index, item in enumerate(raw):
            if isinstance(item, str):
                out.append({"label": item, "message": item})
                continue
            block = self.mapping(item, (*path, index), ("label", "message", "icon", "prompt", "description"),
                                 what="a mapping {label, message, icon}")
            if block is not None:
                out.append(dict(block))
        return out

    def _version(self, value: Any, path: Path) -> str:
        if value is MISSING:
            return "1.0"
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self._type_error(path, value, 'a version string such as "1.0"')
            return "1.0"
        text = str(value).strip()
        if not text:
            self.error(path, 'must not be empty; write a version such as "1.0"')
        elif len(text) > MAX_VERSION_CHARS:
            self.error(path, f"must be at most {MAX_VERSION_CHARS} characters, got {len(text)}")
        return text

    def runtime(self, top: dict[str, Any]) -> tuple[str, Runtime]:
        path: Path = ("runtime",)
        block = self.mapping(top.get("runtime"), path, RUNTIME_KEYS) or {}
        d = Runtime()

        def p(key: str) -> Path:
            return (*path, key)

        mode = self.choice(_get(block, "mode"), p("mode"), MODES, default="conversation", what="mode")
        if mode in ("background", "pipeline"):
            self.warn(p("mode"), f"mode {mode!r} compiles, but this daemon does not run {mode} apps yet")
        self.not_acted(block, path, [k for k in RUNTIME_NOT_ACTED if k != "hooks"])
        hooks = self._hooks(block["hooks"], p("hooks")) if _get(block, "hooks") is not MISSING else []
        tool_injection = self.choice(
            _get(block, "tool_injection"), p("tool_injection"), INJECTION_MODES, default=None, what="tool injection mode"
        )
        direct = self._string_list(_get(block, "direct_modules"), p("direct_modules"))
        runtime = Runtime(
            max_turns=self.integer(_get(block, "max_turns"), p("max_turns"), default=d.max_turns, minimum=1),
            timeout=self.number(_get(block, "timeout"), p("timeout"), default=d.timeout, above=0),
            approval_timeout=self.integer(
                _get(block, "approval_timeout"), p("approval_timeout"), default=d.approval_timeout,
                minimum=30, maximum=3600,
            ),
            max_tool_result_chars=self.integer(
                _get(block, "max_tool_result_chars"), p("max_tool_result_chars"),
                default=d.max_tool_result_chars, minimum=1,
            ),
            context_window_messages=self.integer(
                _get(block, "context_window_messages"), p("context_window_messages"),
                default=d.context_window_messages, minimum=1,
            ),
            session_idle_seconds=self.integer(
                _get(block, "session_idle_seconds"), p("session_idle_seconds"), default=None, minimum=1
            ),
            rate_limit_rpm=self.integer(_get(block, "rate_limit_rpm"), p("rate_limit_rpm"), default=None, minimum=1),
            entry_agent=self.string(_get(block, "entry_agent"), p("entry_agent"), default=""),
            tool_injection=tool_injection,
            direct_modules=tuple(direct),
            context=self.context(_get(block, "context"), p("context")),
            workdir=self.string(_get(block, "workdir"), p("workdir"), default=""),
            workdir_mode=self.choice(
                _get(block, "workdir_mode"), p("workdir_mode"), WORKDIR_MODES, default="auto", what="workdir mode"
            ),
            hooks=tuple(hooks),
        )
        return mode, runtime

    def _string_list(self, raw: Any, path: Path) -> list[str]:
        if raw is MISSING:
            return []
        if not isinstance(raw, list):
            self._type_error(path, raw, "a list of names")
            return []
        out = []
        for index, item in enumerate(raw):
            if not isinstance(item, str):
                self._type_error((*path, index), item, "a name (a string)")
            elif item not in out:
                out.append(item)
        return out

    def context(self, raw: Any, path: Path) -> dict[str, Any]:
        """runtime.context / brain.context (the original's ContextConfig, its defaults)."""
        if raw is MISSING:
            return {}
        block = self.mapping(raw, path, CONTEXT_KEYS)
        if block is None:
            return {}

        def p(key: str) -> Path:
            return (*path, key)

        out: dict[str, Any] = {
            "max_tokens": self.integer(_get(block, "max_tokens"), p("max_tokens"), default=0, minimum=0, maximum=2_000_000),
            "output_reserved": self.integer(_get(block, "output_reserved"), p("output_reserved"), default=4096, minimum=0),
            "strategy": self.choice(_get(block, "strategy"), p("strategy"), CONTEXT_STRATEGIES, default="summarize",
                                    what="strategy"),
            "keep_recent": self.integer(_get(block, "keep_recent"), p("keep_recent"), default=10, minimum=0),
            "compression_trigger": self.number(
                _get(block, "compression_trigger"), p("compression_trigger"), default=0.75, minimum=0, maximum=1
            ),
            "summary_max_tokens": self.integer(
                _get(block, "summary_max_tokens"), p("summary_max_tokens"), default=1024, minimum=1
            ),
            "auto_compact": self.boolean(_get(block, "auto_compact"), p("auto_compact"), default=True),
        }
        if _get(block, "summary_brain") is not MISSING:
            self.warn(p("summary_brain"), NOT_ACTED)
        return out

    def boolean(self, value: Any, path: Path, *, default: Any = MISSING) -> Any:
        if value is MISSING:
            return default
        if isinstance(value, str) and path in self.templates and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        if not isinstance(value, bool):
            self._type_error(path, value, "a boolean (true or false)")
            return default
        return value

    def _hooks(self, raw: Any, path: Path) -> list[dict[str, Any]]:
        """runtime.hooks, compiled for conversations.hooks (which says which actions it runs)."""
        compiled: list[dict[str, Any]] = []
        if not isinstance(raw, list):
            self._type_error(path, raw, "a list of hooks")
            return compiled
        for index, item in enumerate(raw):
            where = (*path, index)
            if isinstance(item, dict) and "true" in item and "on" not in item:
                # PyYAML, the original's reader, loads `on:` as the boolean true, so a manifest it
                # wrote back out says `true: tool_end`: the same hook event.
                item = {("on" if key == "true" else key): value for key, value in item.items()}
            block = self.mapping(item, where, HOOK_KEYS, required={"id": "e.g. id: compact"}, what="a hook mapping")
            if block is None:
                continue
            on = block.get("on", block.get("event"))
            if on is not None:
                if not isinstance(on, str):
                    self._type_error((*where, "on"), on, "an event name")
                elif on not in HOOK_EVENTS:
                    self.error((*where, "on"), f"unknown hook event {on!r}; {did_you_mean(on, HOOK_EVENTS)}")
            shapes_ok = True
            for key in ("condition", "action"):
                value = block.get(key)
                if value is not None and not isinstance(value, dict):
                    self._type_error((*where, key), value, "a mapping with a 'type'")
                    shapes_ok = False
            action = block.get("action") or {}
            if shapes_ok and isinstance(on, str) and on in HOOK_EVENTS and isinstance(block.get("id"), str):
                kind = action.get("type") if isinstance(action, dict) else None
                if kind not in HOOK_ACTIONS_RUN:
                    self.warn((*where, "action"), f"action {kind!r}: the hook fires (a `hook` event) but this "
                              f"daemon runs only the actions {', '.join(HOOK_ACTIONS_RUN)}")
                if on not in HOOK_EVENTS_FIRED:
                    self.warn((*where, "on"), f"{NOT_ACTED}: hooks fire on {', '.join(HOOK_EVENTS_FIRED)}")
                compiled.append(_compiled_hook(block, on))
        return compiled

    def declared_modules(self, top: dict[str, Any]) -> list[str]:
        tools = top.get("tools")
        modules = tools.get("modules") if isinstance(tools, dict) else None
        declared = [m for m in modules if isinstance(m, str)] if isinstance(modules, dict) else []
        # Virtual modules (mcp_<server>, one per MCP server the mcp config declares) come in the
        # catalog with actions None (known only once the server answers): declared with their parent.
        return declared + [m for m, actions in self.catalog.items() if actions is None and m not in declared]

    def agents(self, top: dict[str, Any], declared: list[str]) -> tuple[AgentSpec, ...]:
        path: Path = ("agents",)
        raw = top.get("agents", MISSING)
        example = "agents: [{id: assistant, brain: {provider: openai, model: gpt-4o-mini}}]"
        if raw is MISSING or raw is None:
            # The original accepts an app without agents (a pipeline, a tools-only app).
            self.warn(path, f"no agents: the app cannot answer messages until one is declared, e.g. {example}")
            return ()
        if not isinstance(raw, list):
            hint = "; write each agent as a list item ('- id: assistant')" if isinstance(raw, dict) else ""
            self.error(path, f"must be a list of agents, got {describe_type(raw)}{hint}")
            return ()
        if not raw:
            self.warn(path, f"no agents: the app cannot answer messages until one is declared, e.g. {example}")
            return ()
        specs = []
        first_seen: dict[str, int] = {}
        for index, item in enumerate(raw):
            spec = self.agent(item, (*path, index), declared)
            agent_id = item.get("id") if isinstance(item, dict) else None
            if isinstance(agent_id, str):
                if agent_id in first_seen:
                    self.error(
                        (*path, index, "id"),
                        f"duplicate agent id {agent_id!r} (also agents[{first_seen[agent_id]}].id); "
                        "agent ids must be unique",
                    )
                    continue
                first_seen[agent_id] = index
            if spec is not None:
                specs.append(spec)
        self._delegation(specs, raw, path, declared)
        return tuple(specs)

    def _delegation(self, specs: list[AgentSpec], raw: list, path: Path, declared: list[str]) -> None:
        """delegate_to names declared agents and has no cycle; the agent can reach agent_spawn."""
        ids = [s.id for s in specs]
        index_of = {
            item["id"]: i for i, item in enumerate(raw) if isinstance(item, dict) and isinstance(item.get("id"), str)
        }
        graph = {s.id: list(s.delegate_to) for s in specs}
        for spec in specs:
            for pos, target in enumerate(spec.delegate_to):
                if target not in ids:
                    self.error(
                        (*path, index_of.get(spec.id, 0), "delegate_to", pos),
                        f"unknown agent {target!r}; {did_you_mean(target, ids)}",
                    )
                elif target == spec.id:
                    self.error((*path, index_of.get(spec.id, 0), "delegate_to", pos), "an agent cannot delegate to itself")
        state: dict[str, int] = {}
        reported: set[str] = set()

        def visit(node: str, trail: list[str]) -> None:
            state[node] = 1
            for target in graph.get(node, ()):
                if target == node or target not in graph:
                    continue
                if state.get(target) == 1:
                    cycle = trail[trail.index(target):] + [target] if target in trail else [node, target]
                    if node not in reported:
                        reported.add(node)
                        self.error(
                            (*path, index_of.get(node, 0), "delegate_to"),
                            "delegation cycle: " + " -> ".join(cycle),
                        )
                elif state.get(target) is None:
                    visit(target, [*trail, target])
            state[node] = 2

        for spec in specs:
            if spec.id not in state:
                visit(spec.id, [spec.id])
        # Delegation runs through the agent_spawn module's tools: an agent with a delegate_to list
        # but without them could not delegate at all.
        for spec in specs:
            if not spec.delegate_to:
                continue
            where = (*path, index_of.get(spec.id, 0), "delegate_to")
            if "agent_spawn" not in declared:
                self.warn(where, "agent_spawn is not declared under tools.modules, so this agent cannot delegate; "
                                 "add 'agent_spawn: {}' there")
            elif spec.modules is not None and "agent_spawn" not in spec.modules:
                self.warn(where, "this agent's modules list leaves out agent_spawn, so it cannot delegate; "
                                 "add agent_spawn to it")

    def agent(self, raw: Any, path: Path, declared: list[str]) -> AgentSpec | None:
        block = self.mapping(
            raw,
            path,
            AGENT_KEYS,
            required={
                "id": "e.g. id: assistant",
                "brain": "e.g. brain: {provider: openai, model: gpt-4o-mini}",
            },
            what="a mapping describing one agent",
        )
        if block is None:
            return None
        agent_id = self.string(_get(block, "id"), (*path, "id"), default=None)
        if agent_id is not None and not AGENT_ID.match(agent_id):
            self.error(
                (*path, "id"),
                f"{agent_id!r} is not a valid agent id: use 1-64 letters, digits, '_' or '-', "
                "starting with a letter or digit",
            )
            agent_id = None
        self.not_acted(block, path, AGENT_NOT_ACTED)
        name = self.string(_get(block, "name"), (*path, "name"), default="")
        system_prompt = self.string(_get(block, "system_prompt"), (*path, "system_prompt"), default="")
        role = self.string(_get(block, "role"), (*path, "role"), default="worker")
        specialty = self.string(_get(block, "specialty"), (*path, "specialty"), default="")
        delegate_to = self._string_list(_get(block, "delegate_to"), (*path, "delegate_to"))
        errors_before = len(self.problems.errors)
        modules, module_actions = self._agent_modules(_get(block, "modules"), (*path, "modules"), declared)
        # A bad entry is already reported; checking the script against the rest would only echo it.
        restriction = modules if len(self.problems.errors) == errors_before else None
        max_turns = self.integer(_get(block, "max_turns"), (*path, "max_turns"), default=None, minimum=1)
        brain = None
        if _get(block, "brain") is not MISSING:
            brain = self.brain(block["brain"], (*path, "brain"), declared, restriction)
        if agent_id is None or brain is None:
            return None
        return AgentSpec(
            id=agent_id,
            name=name or agent_id,
            system_prompt=system_prompt,
            brain=brain,
            modules=modules,
            max_turns=max_turns,
            role=role,
            specialty=specialty,
            delegate_to=tuple(delegate_to),
            module_actions=module_actions,
        )

    def _agent_modules(
        self, raw: Any, path: Path, declared: list[str]
    ) -> tuple[tuple[str, ...] | None, dict[str, tuple[str, ...]]]:
        """``[filesystem, {shell: [bash]}]`` (or a mapping ``{filesystem: [], shell: [bash]}``)."""
        if raw is MISSING:
            return None, {}
        if isinstance(raw, dict):
            raw = [{k: v} if v else k for k, v in raw.items()]
        if not isinstance(raw, list):
            self._type_error(path, raw, "a list of module ids (declared under tools.modules)")
            return None, {}
        if not raw:
            return None, {}  # the original: an empty list means every module of the app
        out: list[str] = []
        actions: dict[str, tuple[str, ...]] = {}
        for index, item in enumerate(raw):
            where = (*path, index)
            granted: list[str] | None = None
            if isinstance(item, dict):
                if len(item) != 1:
                    self.error(where, f"a granular entry has exactly one module key, got {sorted(item)}; "
                                      "write one list item per module")
                    continue
                item, granted = next(iter(item.items()))
                if granted is None:
                    granted = []
                if not isinstance(granted, list) or not all(isinstance(a, str) for a in granted):
                    self._type_error((*where, item), granted, "a list of action names, e.g. [bash]")
                    continue
            if not isinstance(item, str):
                self._type_error(where, item, "a module id (a string) or {module: [actions]}")
                continue
            if item in SYSTEM_MODULES:
                continue
            if item in out:
                self.error(where, f"module {item!r} is listed twice")
                continue
            if item in self.unavailable:
                continue  # reported once, under tools.modules
            if item not in declared:
                if item in self.catalog:
                    self.error(where, f"module {item!r} is not declared under tools.modules; declare it there first")
                elif item not in self.unavailable:
                    self.error(where, self._not_available(item))
                continue
            out.append(item)
            if granted:
                checked = self._actions_of(item, granted, (*where, item))
                if checked:
                    actions[item] = tuple(checked)
        return tuple(out), actions

    def _not_available(self, module: str) -> str:
        known = sorted(m for m in self.catalog if m not in MODULE_ALIASES)
        close = did_you_mean(module, known)
        hint = f"; {close}" if close.startswith("did you mean") else ""
        return f"module {module!r} is not available in this build (available: {', '.join(known)}){hint}"

    def _actions_of(self, module: str, actions: list[str], path: Path, *, scalar: bool = False) -> list[str]:
        """The action names of ``module`` in ``actions``. A name close to a real action is a typo (error);
        one the original's module has but this build's does not is kept with a warning."""
        known = self.catalog.get(module, [])
        if known is None:  # a virtual module (an MCP server's tools): its actions are known at run time
            return list(dict.fromkeys(actions))
        out: list[str] = []
        for index, action in enumerate(actions):
            where = path if scalar else (*path, index)
            # The original's name of an action this build has under another name (glob -> find).
            action = ORIGINAL_ACTION_NAMES.get(module, {}).get(action, action)
            if action in known or action == "*":
                if action not in out:
                    out.append(action)
                continue
            hint = did_you_mean(action, known)
            if hint.startswith("did you mean") and action not in ORIGINAL_ACTIONS.get(module, ()):
                self.error(where, f"unknown action {action!r} of module {module!r}; {hint}")
            else:
                self.warn(where, f"module {module!r} of this build has no action {action!r}; {hint}")
                out.append(action)
        return out

    def _undeclared(self, module: str, declared: list[str]) -> str:
        if module in self.catalog:
            return f"module {module!r} is not declared under tools.modules; declare it there first"
        return f"unknown module {module!r}; {did_you_mean(module, declared or self.catalog)}"

    def brain(
        self, raw: Any, path: Path, declared: list[str], agent_modules: tuple[str, ...] | None, *, depth: int = 0
    ) -> BrainSpec | None:
        block = self.mapping(raw, path, BRAIN_KEYS)
        if block is None:
            return None
        self.not_acted(block, path, BRAIN_NOT_ACTED)
        provider = _get(block, "provider")
        backend = self.string(_get(block, "backend"), (*path, "backend"), default=None)
        protocol = None
        # A provider this build lacks is one error, at the provider when the brain names it (then the
        # backend and base_url errors it would cascade into say nothing more).
        lacking = provider.strip().lower() if isinstance(provider, str) else None
        if lacking in UNSUPPORTED_PROVIDERS:
            self.error((*path, "provider"), f"provider {provider!r} is not available in this build "
                                            f"(it cannot be served by this daemon: {UNSUPPORTED_PROVIDERS[lacking]})")
            return None
        if backend in UNSUPPORTED_BACKENDS:
            self.error((*path, "backend"), f"backend {backend!r} is not available in this build "
                                           f"(it cannot be served by this daemon: {UNSUPPORTED_BACKENDS[backend]})")
            return None
        if backend is not None:
            if backend not in BACKENDS:
                self.error((*path, "backend"), f"unknown backend {backend!r}; {did_you_mean(backend, BACKENDS)}")
            else:
                protocol = BACKENDS[backend]
        if provider is MISSING:
            if _get(block, "provider_id") is not MISSING:
                self.error((*path, "provider_id"),
                           "named providers (tools.modules.llm_provider) are not available in this build; "
                           "write provider, model and config in the brain")
                return None
            if protocol is None:
                self.error((*path, "provider"), "required: one of " + ", ".join(sorted(PROVIDERS)))
                return None
            provider = "anthropic" if protocol == "anthropic" else "openai"
        if not isinstance(provider, str):
            self._type_error((*path, "provider"), provider, "a provider name such as openai")
            return None
        spec = provider_named(provider)
        if spec is None:
            lowered = provider.strip().lower()
            if protocol is not None:
                spec = None  # an unnamed OpenAI-compatible / Anthropic endpoint chosen by backend
            else:
                self.error((*path, "provider"),
                           f"unknown provider {provider!r}; {did_you_mean(lowered, PROVIDERS)} "
                           "(or set backend: openai_compat with config.base_url)")
                return None
        if protocol is None:
            protocol = spec.protocol if spec else "openai"
        model = self.string(_get(block, "model"), (*path, "model"), default="")
        if protocol != "scripted" and isinstance(model, str) and not model.strip():
            self.error((*path, "model"), f"required for provider {provider!r}, {MODEL_REQUIRED}")
        temperature = self.number(
            _get(block, "temperature"), (*path, "temperature"), default=BrainSpec(provider="x").temperature,
            minimum=0, maximum=2,
        )
        top_p = self.number(_get(block, "top_p"), (*path, "top_p"), default=None, minimum=0, maximum=1)
        max_tokens = self.integer(_get(block, "max_tokens"), (*path, "max_tokens"), default=None, minimum=1)
        timeout = self.number(_get(block, "timeout"), (*path, "timeout"), default=60.0, above=0)
        native = self.boolean(_get(block, "native_tool_use"), (*path, "native_tool_use"), default=None)
        context = self.context(_get(block, "context"), (*path, "context")) or None
        config = self.mapping(block.get("config"), (*path, "config"), None, what="a mapping of provider settings")
        credential = _get(block, "credential")
        if credential is not MISSING:
            if not isinstance(credential, str | dict):
                self._type_error((*path, "credential"), credential, "a credential name or {ref, scope}")
            else:
                ref = credential if isinstance(credential, str) else credential.get("ref")
                if not isinstance(ref, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", ref):
                    self.error((*path, "credential"), "must name a secret of the app: letters, digits, '_'")
                elif config is not None and "api_key" not in config:
                    # A vault credential is this daemon's per-app secret of that name.
                    config = {**config, "api_key": f"{{{{secret.{ref}}}}}"}
                    if ref not in self.secret_refs:
                        self.secret_refs.append(ref)
        fallback = None
        if _get(block, "fallback") is not MISSING:
            if depth >= 3:
                self.error((*path, "fallback"), "fallback brains nest at most 3 deep")
            else:
                spec_fb = self.brain(block["fallback"], (*path, "fallback"), declared, agent_modules, depth=depth + 1)
                if spec_fb is not None:
                    from dataclasses import asdict

                    fallback = asdict(spec_fb)
        if config is not None:
            config = dict(config)
            if protocol == "scripted":
                config = self._scripted_config(config, (*path, "config"), declared, agent_modules)
            else:
                self._remote_config(config, (*path, "config"))
                if spec is not None and not config.get("base_url"):
                    config["base_url"] = spec.base_url
                if spec is None and not config.get("base_url"):
                    self.error((*path, "config", "base_url"),
                               f"required: provider {provider!r} is not one this daemon knows, so give its URL")
        if config is None:
            return None
        return BrainSpec(
            provider=provider,
            model=model if isinstance(model, str) else "",
            temperature=temperature,
            max_tokens=max_tokens,
            timeout=timeout,
            config=config,
            protocol=protocol,
            top_p=top_p,
            native_tool_use=native,
            context=context,
            fallback=fallback,
        )

    def _remote_config(self, config: dict[str, Any], path: Path) -> None:
        base_url = config.get("base_url")
        if base_url is not None:
            if not isinstance(base_url, str):
                self._type_error((*path, "base_url"), base_url, "a URL string")
            elif (
                not SECRET_MARKER.search(base_url) and not UNSET_ENV_MARKER.match(base_url)
                and not base_url.startswith(("http://", "https://"))
            ):  # an unset {{env.X}} is already a warning: its value is only known when the app runs
                self.error((*path, "base_url"), f"must be an http:// or https:// URL, got {base_url!r}")
        api_key = config.get("api_key")
        if api_key is not None and not isinstance(api_key, str):
            self._type_error((*path, "api_key"), api_key, "a string (usually {{secret.KEY}})")
    # -- scripted brain ----------------------------------------------------------------------
    def _scripted_config(
        self, config: dict[str, Any], path: Path, declared: list[str], agent_modules: tuple[str, ...] | None
    ) -> dict[str, Any]:
        rules = config.get("rules")
        rules_path = (*path, "rules")
        example = "rules: [{when: 'hello', steps: [{say: 'Hi!'}]}]"
        if rules is None:
            self.error(rules_path, f"required for the scripted provider, e.g. {example}")
            return config
        if not isinstance(rules, list):
            self._type_error(rules_path, rules, "a list of rules")
            return config
        if not rules:
            self.error(rules_path, f"must hold at least one rule, e.g. {example}")
            return config
        tools = declared if agent_modules is None else list(agent_modules)
        config["rules"] = [
            self._script_rule(rule, (*rules_path, index), tools, agent_modules is not None)
            for index, rule in enumerate(rules)
        ]
        return config

    def _script_rule(self, raw: Any, path: Path, tools: list[str], restricted: bool) -> Any:
        block = self.mapping(
            raw,
            path,
            SCRIPT_RULE_KEYS,
            required={"steps": "e.g. steps: [{say: 'Hello'}]"},
            what="a rule mapping {when, steps}",
        )
        if block is None:
            return raw
        out = dict(block)
        when = _get(block, "when")
        if when is not MISSING:
            when = self.string(when, (*path, "when"), default=None)
            if when is not None:
                try:
                    re.compile(when)
                except re.error as exc:
                    self.error(
                        (*path, "when"),
                        f"invalid regular expression {when!r}: {exc.msg} at position {exc.pos}",
                    )
        steps = _get(block, "steps")
        if steps is MISSING:
            return out
        if not isinstance(steps, list):
            self._type_error((*path, "steps"), steps, "a list of steps")
            return out
        out["steps"] = [
            self._step(step, (*path, "steps", i), tools, restricted) for i, step in enumerate(steps)
        ]
        return out

    def _step(self, raw: Any, path: Path, tools: list[str], restricted: bool) -> Any:
        if not isinstance(raw, dict):
            self._type_error(
                path, raw, "a step mapping: {call: module.action}, {calls: [...]} or {say: text}"
            )
            return raw
        kinds = [k for k in STEP_KINDS if k in raw]
        if not kinds:
            unknown = next(iter(raw), None)
            hint = f" ({unknown!r}: {did_you_mean(unknown, STEP_KINDS)})" if unknown is not None else ""
            self.error(path, f"a step needs one of call, calls or say{hint}")
            return raw
        if len(kinds) > 1:
            self.error(
                path,
                f"a step has exactly one of call, calls or say, found {' and '.join(kinds)}; split it into steps",
            )
            return raw
        kind = kinds[0]
        allowed = ("call", "params") if kind == "call" else (kind,)
        self.mapping(raw, path, allowed)
        out = dict(raw)
        if kind == "say":
            self.string(raw["say"], (*path, "say"), default=None)
        elif kind == "call":
            out["call"] = self._tool_ref(raw["call"], (*path, "call"), tools, restricted)
            self._params(raw.get("params"), (*path, "params"))
        else:
            calls = raw["calls"]
            if not isinstance(calls, list) or not calls:
                self.error(
                    (*path, "calls"), "must be a non-empty list of {call: module.action, params: {...}}"
                )
                return out
            parsed = []
            for index, item in enumerate(calls):
                item_path = (*path, "calls", index)
                block = self.mapping(
                    item,
                    item_path,
                    ("call", "params"),
                    required={"call": "e.g. call: filesystem.read"},
                    what="a mapping {call, params}",
                )
                if block is None or "call" not in block:
                    parsed.append(item)
                    continue
                block = dict(block)
                block["call"] = self._tool_ref(block["call"], (*item_path, "call"), tools, restricted)
                self._params(block.get("params"), (*item_path, "params"))
                parsed.append(block)
            out["calls"] = parsed
        return out

    def _params(self, raw: Any, path: Path) -> None:
        if raw is not None and not isinstance(raw, dict):
            self._type_error(path, raw, "a mapping of tool parameters")

    def _tool_ref(self, raw: Any, path: Path, tools: list[str], restricted: bool) -> Any:
        """``module.action`` or ``module__action`` -> ``module.action``, checked against the catalog."""
        if not isinstance(raw, str):
            self._type_error(path, raw, "a tool name such as 'filesystem.read'")
            return raw
        if raw in self.meta_tools:
            return raw  # search_tools, execute_tool, background_run, ...: always offered to agents
        module, action = _split_tool(raw)
        if not module or not action:
            self.error(path, f"{raw!r} is not a tool name; write 'module.action', e.g. 'filesystem.read'")
            return raw
        module = MODULE_ALIASES.get(module, module)
        if module not in tools:
            if restricted and module in self.catalog:
                self.error(
                    path,
                    f"module {module!r} is not in this agent's modules ({', '.join(tools) or 'none'}); add it there",
                )
            else:
                self.error(path, self._undeclared(module, tools))
            return raw
        # The original's name of an action this build has under another name (glob -> find,
        # bash -> run), as grants and agent calls accept it.
        action = ORIGINAL_ACTION_NAMES.get(module, {}).get(action, action)
        actions = self.catalog.get(module)
        if actions is not None and action not in actions:
            self.error(
                path, f"unknown action {action!r} of module {module!r}; {did_you_mean(action, actions)}"
            )
            return raw
        return f"{module}.{action}"

    # -- tools -------------------------------------------------------------------------------
    def tools(
        self, top: dict[str, Any], declared: list[str]
    ) -> tuple[dict[str, dict[str, Any]], Capabilities | None, dict[str, dict[str, Any]], int | None]:
        path: Path = ("tools",)
        block = self.mapping(top.get("tools"), path, TOOLS_KEYS)
        if block is None:
            return {}, None, {}, None
        modules, constraints = self._modules(block.get("modules"), (*path, "modules"))
        if block.get("channels"):
            self.mapping(block["channels"], (*path, "channels"), None, what="a mapping of channel name -> settings")
            self.warn((*path, "channels"), NOT_ACTED)
        capabilities, approval_timeout = None, None
        if block.get("capabilities") is not None:
            capabilities, approval_timeout = self._capabilities(
                block["capabilities"], (*path, "capabilities"), declared
            )
        return modules, capabilities, constraints, approval_timeout

    def _modules(self, raw: Any, path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        block = self.mapping(raw, path, None, what="a mapping of module id -> settings")
        if block is None:
            return {}, {}
        out: dict[str, dict[str, Any]] = {}
        constraints: dict[str, dict[str, Any]] = {}
        for module, settings in block.items():
            module_path = (*path, module)
            if module in SYSTEM_MODULES:
                if settings:
                    self.warn(module_path, f"{NOT_ACTED} (the discovery meta-tools are always provided)")
                continue
            if module not in self.catalog:
                self.unavailable.add(module)
                self.error(module_path, self._not_available(module))
                continue
            if settings is None:
                settings = {}
            if not isinstance(settings, dict):
                self._type_error(module_path, settings, "a mapping of settings (or empty for the defaults)")
                continue
            # Keys directly under the module other than the block's own fold into config, as the
            # original does for old flat module settings (this project's README form).
            config = settings.get("config")
            if config is None:
                config = {}
            if not isinstance(config, dict):
                self._type_error((*module_path, "config"), config, "a mapping of settings")
                config = {}
            flat = {k: v for k, v in settings.items() if k not in MODULE_BLOCK_KEYS}
            config = {**flat, **config}
            for key in ("setup", "middleware", "credential"):
                if settings.get(key):
                    self.warn((*module_path, key), NOT_ACTED)
            limits = self._constraints(module, settings.get("constraints"), (*module_path, "constraints"), config)
            if limits:
                constraints[module] = limits
            out[module] = self._module_config(module, config, module_path)
        return out, constraints

    def _constraints(self, module: str, raw: Any, path: Path, config: dict[str, Any]) -> dict[str, Any]:
        block = self.mapping(raw, path, None, what="a mapping of constraints")
        if not block:
            return {}
        out: dict[str, Any] = {}
        for key in ("allowed_actions", "blocked_actions"):
            if key in block and block[key] is not None:
                names = self._string_list(block[key], (*path, key))
                out[key] = self._actions_of(module, names, (*path, key))
        schema = (self.config_schema(module) or {}).get("properties") or {}
        for key, value in block.items():
            if key in ("allowed_actions", "blocked_actions"):
                continue
            if key in schema:  # e.g. shell allowed_commands / blocked_commands: enforced by the module
                config.setdefault(key, value)
            else:
                self.warn((*path, key), NOT_ACTED)
        return out

    def _module_config(self, module: str, config: dict[str, Any], path: Path) -> dict[str, Any]:
        schema = self.config_schema(module) or {}
        config = _coerce_by_schema(config, schema, (*path, "config"), self.templates)
        known = list((schema.get("properties") or {}).keys())
        if schema.get("additionalProperties") is False:
            # A setting the original's module has and this build's does not: accepted with a warning
            # (the module runs with its own defaults); a close spelling of a real one is a typo.
            for key in list(config):
                if key in known:
                    continue
                close = difflib.get_close_matches(key, known, n=1, cutoff=SETTING_TYPO_CUTOFF)
                if close:  # a near spelling of a real setting is a typo; anything else, the original's
                    self.error((*path, "config", key), f"unknown setting; did you mean '{close[0]}'?")
                else:
                    self.warn((*path, "config", key), NOT_ACTED)
                config.pop(key)
        validator_cls = jsonschema.validators.validator_for(schema)
        validator = validator_cls(schema)
        for err in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
            where = (*path, "config", *err.absolute_path)
            if err.validator != "type" and isinstance(err.instance, str) and (
                SECRET_MARKER.search(err.instance) or UNSET_ENV_MARKER.search(err.instance)
            ):
                continue  # the value is only known at run time (an unset {{env.X}} is already a warning)
            if err.validator == "required" and isinstance(err.validator_value, list):
                missing = [k for k in err.validator_value if isinstance(err.instance, dict) and k not in err.instance]
                for key in missing:
                    self.error((*where, key), "required")
            elif err.validator == "type":
                expected = err.validator_value
                expected = " or ".join(expected) if isinstance(expected, list) else str(expected)
                self._type_error(where, err.instance, f"of type {expected}")
            elif err.validator == "additionalProperties":
                self.warn(where, f"{NOT_ACTED}: {err.message}")
            else:
                self.error(where, err.message)
        return config

    def _capabilities(
        self, raw: Any, path: Path, declared: list[str]
    ) -> tuple[Capabilities | None, int | None]:
        block = self.mapping(raw, path, CAPABILITY_KEYS)
        if block is None:
            return None, None
        d = Capabilities()
        default_policy = self.choice(
            _get(block, "default_policy"), (*path, "default_policy"), POLICIES, default=d.default_policy, what="policy"
        )
        max_risk_level = self.choice(
            _get(block, "max_risk_level"), (*path, "max_risk_level"), RISK_LEVELS, default=d.max_risk_level,
            what="risk level",
        )
        approval_timeout = self.integer(
            _get(block, "approval_timeout"), (*path, "approval_timeout"), default=None, minimum=30, maximum=3600
        )
        self.not_acted(block, path, ("max_data_classification", "rate_limits"))
        lists: dict[str, tuple[CapabilityRule, ...]] = {}
        for kind in ("grant", "approve", "deny", "hidden_actions"):
            raw_rules = _get(block, kind)
            rules: list[CapabilityRule] = []
            if raw_rules is not MISSING:
                if not isinstance(raw_rules, list):
                    self._type_error((*path, kind), raw_rules, "a list of rules")
                else:
                    for index, item in enumerate(raw_rules):
                        rule = self._capability_rule(item, (*path, kind, index), declared)
                        if rule is not None:
                            rules.append(rule)
            lists[kind] = tuple(rules)
        hidden_modules = self._string_list(_get(block, "hidden_modules"), (*path, "hidden_modules"))
        for index, module in enumerate(hidden_modules):
            if module not in self.catalog and module not in SYSTEM_MODULES and module not in self.unavailable:
                self.warn((*path, "hidden_modules", index), f"module {module!r} is not available in this build")
        # The original refuses a tool both granted and denied.
        for gi, grant in enumerate(lists["grant"]):
            for deny in lists["deny"]:
                if grant.module != deny.module:
                    continue
                # Only actions both lists name: "grant the module, deny one action" is the common form.
                both = set(grant.actions or ()) & set(deny.actions or ())
                if both:
                    self.error(
                        (*path, "grant", gi),
                        f"{', '.join(f'{grant.module}.{a}' for a in sorted(both))} is both granted and denied; "
                        "keep it in one list",
                    )
        caps = Capabilities(
            default_policy=default_policy,
            max_risk_level=max_risk_level,
            grant=lists["grant"],
            approve=lists["approve"],
            deny=lists["deny"],
            hidden_modules=tuple(hidden_modules),
            hidden_actions=lists["hidden_actions"],
        )
        return caps, approval_timeout

    def _capability_rule(self, raw: Any, path: Path, declared: list[str]) -> CapabilityRule | None:
        if isinstance(raw, str):
            module, action = _split_tool(raw)
            module_path = action_path = path
            actions: Any = [action] if action else MISSING
            reason = ""
        else:
            block = self.mapping(
                raw,
                path,
                RULE_KEYS,
                required={"module": "e.g. module: filesystem"},
                what="a module id ('filesystem'), a tool ('filesystem.read') or a mapping {module, actions, reason}",
            )
            if block is None or _get(block, "module") is MISSING:
                return None
            module = self.string(block["module"], (*path, "module"), default=None)
            if module is None:
                return None
            module_path = (*path, "module")
            actions = _get(block, "actions")
            action_path = (*path, "actions")
            if _get(block, "tools") is not MISSING:
                if actions is not MISSING:
                    self.error((*path, "tools"), "write the actions under 'actions' or 'tools', not both")
                    return None
                actions, action_path = block["tools"], (*path, "tools")
            reason = self.string(_get(block, "reason"), (*path, "reason"), default="")
        if module in SYSTEM_MODULES:
            return None  # always auto in the original
        if module not in self.catalog and module != "*":
            if module in self.unavailable:
                return None  # already reported under tools.modules
            hint = did_you_mean(module, self.catalog)
            if hint.startswith("did you mean"):
                self.error(module_path, f"unknown module {module!r}; {hint}")
            else:  # the app means to use it (the original loads granted modules): name what is lacking
                self.unavailable.add(module)
                self.error(module_path, self._not_available(module))
            return None
        if module not in declared and module != "*":
            self.problems.warn(
                module_path,
                f"module {module!r} is not declared under tools.modules, so this rule has no effect",
            )
        if actions is MISSING:
            return CapabilityRule(module=module, actions=None, reason=reason)
        if isinstance(actions, str):
            actions = [actions]
        if not isinstance(actions, list):
            self._type_error(action_path, actions, "a list of action names, e.g. [read, ls]")
            return None
        if not actions:
            return CapabilityRule(module=module, actions=None, reason=reason)  # empty = every action
        if not all(isinstance(a, str) for a in actions):
            for index, action in enumerate(actions):
                if not isinstance(action, str):
                    self._type_error((*action_path, index), action, "an action name (a string)")
            return None
        if module == "*":
            return CapabilityRule(module=module, actions=tuple(dict.fromkeys(actions)), reason=reason)
        errors = len(self.problems.errors)
        checked = self._actions_of(module, actions, action_path, scalar=isinstance(raw, str))
        if len(self.problems.errors) != errors:
            return None
        return CapabilityRule(module=module, actions=tuple(checked), reason=reason)

def _declare_agent_modules(top: dict[str, Any], catalog: Mapping[str, Any], problems: Problems) -> dict[str, Any]:
    """A module of this build that an agent lists under ``modules:`` but the app does not declare under
    ``tools.modules`` is loaded with its default settings, as the Go port does (its compiler only asks
    that an agent's modules exist). Only the agents that list it get it: an agent without a list of
    its own keeps the modules the app declared."""
    agents = top.get("agents")
    tools = top.get("tools") if isinstance(top.get("tools"), dict) else {}
    modules = tools.get("modules") if isinstance(tools, dict) else None
    if not isinstance(agents, list) or (modules is not None and not isinstance(modules, dict)):
        return top
    declared = list(modules or {})
    added: dict[str, Any] = {}
    for index, agent in enumerate(agents):
        listed = agent.get("modules") if isinstance(agent, dict) else None
        if isinstance(listed, dict):
            listed = list(listed)
        if not isinstance(listed, list):
            continue
        for position, item in enumerate(listed):
            module = next(iter(item), None) if isinstance(item, dict) and len(item) == 1 else item
            if (
                not isinstance(module, str) or module in declared or module in added
                or module in SYSTEM_MODULES or catalog.get(module, None) is None
            ):
                continue
            added[module] = {}
            problems.warn(
                ("agents", index, "modules", position),
                f"module {module!r} is not declared under tools.modules: loaded with its default settings "
                "for the agents that list it",
            )
    if not added:
        return top
    out_agents = []
    for agent in agents:
        if isinstance(agent, dict) and not agent.get("modules") and declared:
            agent = {**agent, "modules": list(declared)}
        out_agents.append(agent)
    return {**top, "tools": {**tools, "modules": {**(modules or {}), **added}}, "agents": out_agents}


def _declare_granted_agent_spawn(top: dict[str, Any], catalog: Mapping[str, Any]) -> dict[str, Any]:
    """``capabilities.grant: [{module: agent_spawn}]`` loads the delegation module even when
    ``tools.modules`` does not declare it: the original offers the agent tool to an app that
    declares *or grants* ``agent_spawn`` (Go ``appAgentSpawnEnabled``), and coordinator apps often
    only grant it. Agents with a module list of their own still see only what they list."""
    tools = top.get("tools") if isinstance(top.get("tools"), dict) else {}
    modules = tools.get("modules")
    capabilities = tools.get("capabilities")
    if "agent_spawn" not in catalog or not isinstance(capabilities, dict):
        return top
    if modules is not None and (not isinstance(modules, dict) or "agent_spawn" in modules):
        return top
    grants = capabilities.get("grant")
    granted = isinstance(grants, list) and any(
        isinstance(rule, dict) and rule.get("module") == "agent_spawn" for rule in grants
    )
    if not granted:
        return top
    return {**top, "tools": {**tools, "modules": {**(modules or {}), "agent_spawn": {}}}}


def _split_tool(name: str) -> tuple[str, str]:
    """``module.action`` or ``module__action`` (the wire form LLM providers need) -> (module, action);
    the dotted form wins, as in ``conversations.brains.base.canonical_tool_name``."""
    if "." in name:
        module, _, action = name.partition(".")
    else:
        module, _, action = name.partition("__")
    return module, action


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def _coerce_by_schema(value: Any, schema: Any, path: Path, templates: Mapping[Path, str]) -> Any:
    """Read interpolated strings as the number/boolean the module's JSON schema asks for, and the Go
    port's durations ("30s", "5m", "500ms") as seconds where a number is wanted."""
    if not isinstance(schema, dict):
        return value
    wanted_type = schema.get("type")
    if isinstance(value, str) and wanted_type in ("number", "integer") and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_SECONDS[match.group(2)]
        return int(seconds) if wanted_type == "integer" and seconds.is_integer() else seconds
    if isinstance(value, str) and path in templates and not SECRET_MARKER.search(value):
        wanted = schema.get("type")
        wanted = [wanted] if isinstance(wanted, str) else list(wanted or [])
        if "string" not in wanted:
            text = value.strip()
            for kind in wanted:
                if kind == "integer":
                    try:
                        return int(text)
                    except ValueError:
                        continue
                if kind == "number":
                    try:
                        number = float(text)
                    except ValueError:
                        continue
                    if math.isfinite(number):
                        return number
                if kind == "boolean" and text.lower() in _BOOL_WORDS:
                    return _BOOL_WORDS[text.lower()]
        return value
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        return {
            k: _coerce_by_schema(
                v, properties.get(k, extra if isinstance(extra, dict) else {}), (*path, k), templates
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        items = schema.get("items")
        return [
            _coerce_by_schema(v, items if isinstance(items, dict) else {}, (*path, i), templates)
            for i, v in enumerate(value)
        ]
    return value



def build_app(
    top: dict[str, Any],
    *,
    problems: Problems,
    templates: Mapping[Path, str],
    secret_refs: Sequence[str],
    catalog: Mapping[str, Sequence[str] | None],
    config_schema: Callable[[str], dict],
    meta_tools: Sequence[str] = (),
    env_refs: Sequence[str] = (),
) -> CompiledApp | None:
    """The compiled app, or None when ``problems`` holds at least one error."""
    checker = Checker(problems, templates, catalog, config_schema, meta_tools)
    checker.secret_refs = list(secret_refs)
    for key in top:
        if key not in CANONICAL_KEYS and key not in EXTRA_TOP_KEYS:
            problems.error((key,), f"unknown key; {did_you_mean(key, (*CANONICAL_KEYS, *LEGACY_KEYS))}")
    checker.not_acted(top, (), (*EXTRA_TOP_KEYS, "flow", "templates"))
    app = checker.app(top)
    mode, runtime = checker.runtime(top)
    top = _declare_granted_agent_spawn(top, checker.catalog)
    top = _declare_agent_modules(top, checker.catalog, problems)
    declared = checker.declared_modules(top)
    modules, capabilities, constraints, approval_timeout = checker.tools(top, declared)
    agents = checker.agents(top, declared)
    security = checker.free_block(top.get("security"), ("security",), SECURITY_KEYS)
    ui = checker.free_block(top.get("ui"), ("ui",), UI_KEYS, UI_HONOURED)
    dev = checker.free_block(top.get("dev"), ("dev",), DEV_KEYS, DEV_HONOURED)
    if isinstance(ui.get("greeting"), str | type(None)) is False:
        checker._type_error(("ui", "greeting"), ui["greeting"], "a string")
    if approval_timeout is not None:
        from dataclasses import replace

        runtime = replace(runtime, approval_timeout=approval_timeout)
    agent_ids = [a.id for a in agents]
    if runtime.entry_agent and agents and runtime.entry_agent not in agent_ids:
        problems.error(("runtime", "entry_agent"), f"unknown agent {runtime.entry_agent!r}; {did_you_mean(runtime.entry_agent, agent_ids)}")
    for index, module in enumerate(runtime.direct_modules):
        if module not in modules and module not in SYSTEM_MODULES and module not in checker.unavailable:
            problems.error(("runtime", "direct_modules", index), checker._undeclared(module, list(modules)))
    if problems or "app_id" not in app:
        return None
    return CompiledApp(
        app_id=app["app_id"],
        name=app["name"],
        version=app["version"],
        description=app["description"],
        mode=mode,
        runtime=runtime,
        agents=agents,
        modules=modules,
        capabilities=capabilities,
        security=security,
        ui=ui,
        dev=dev,
        app_meta=app.get("meta", {}),
        module_constraints=constraints,
        secret_refs=tuple(checker.secret_refs),
        env_refs=tuple(env_refs),
    )
