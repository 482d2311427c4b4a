"""mcp: Model Context Protocol servers declared by the app, as tools.

Config::

    mcp:
      servers:
        notes:                        # server id: [a-z0-9_], becomes the virtual module mcp_notes
          command: python             # stdio: the program and its args ("python" = the daemon's)
          args: [servers/notes.py]
          env: {NOTES_TOKEN: "{{secret.NOTES_TOKEN}}"}
          cwd: /srv/notes
        search:
          transport: streamable_http  # or sse; default stdio when command is set, else streamable_http
          url: http://127.0.0.1:9000/mcp
          headers: {Authorization: "Bearer {{secret.SEARCH_TOKEN}}"}
          timeout: 30                 # seconds to connect and per request
          idle_timeout: 600           # stop the connection after this long unused
          risk_level: medium          # override the risk inferred for every tool of the server

Each server's tools become a virtual module ``mcp_<server>`` (``mcp_notes.add``): indexed,
searchable and callable like any tool, through the same policy gate; a grant (or an agent's module
list) naming ``mcp`` covers them, and rules may also name ``mcp_<server>`` itself. The risk of a
virtual tool is inferred from the server's annotations: ``readOnlyHint`` → low, ``destructiveHint``
false → medium, otherwise (destructive or unspecified) high — annotations are the server's claims,
so an app that trusts less sets ``risk_level`` per server.

The module's own actions keep the original's names (``server_id``, ``tool_name``, ``arguments``...).
Servers are only those the manifest declares: unlike the original, ``connect`` takes no command or
URL from the model, because that would let model output start programs. ``call_tool`` reaches
every tool of a server, so it carries the highest risk.

Connections: see :mod:`tooling.modules.mcp.pool` (lazy, reused, restarted, stopped). The SDK is
imported only when a server is used.
"""

from __future__ import annotations

import logging
import re
from functools import cache
from typing import Any, ClassVar

from tooling.modules.base import ActionSpec, Module, ToolError, action

log = logging.getLogger("digitorn.tooling.mcp")

SERVER_ID = r"^[a-z0-9][a-z0-9_]{0,63}$"
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_SERVER = {"type": "string", "minLength": 1, "maxLength": 64, "description": "Server id from the app's mcp config."}
_ARGS = {"type": "object", "description": "Arguments of the tool or prompt."}
MAX_DESCRIPTION = 1024

_SERVER_SCHEMA = {
    "type": "object",
    "properties": {
        "transport": {"type": "string", "enum": ["stdio", "sse", "streamable_http", "streamable-http", "http"]},
        "command": {"type": "string", "minLength": 1},
        "args": {"type": "array", "items": {"type": "string"}},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "cwd": {"type": "string"},
        "url": {"type": "string", "pattern": "^https?://"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
        "idle_timeout": {"type": "number", "exclusiveMinimum": 0},
        "risk_level": {"type": "string", "enum": ["low", "medium", "high"]},
        "description": {"type": "string"},
    },
    "additionalProperties": False,
}


def _pool():
    from tooling.modules.mcp.pool import POOL

    return POOL


def _servers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    servers = config.get("servers") if isinstance(config, dict) else None
    if not isinstance(servers, dict):
        return {}
    return {
        k: dict(v or {})
        for k, v in servers.items()
        if isinstance(k, str) and re.match(SERVER_ID, k) and isinstance(v or {}, dict)
    }


def _server_config(config: dict[str, Any], server_id: str) -> dict[str, Any]:
    servers = _servers(config)
    if server_id not in servers:
        raise ToolError(
            f"params.server_id: no MCP server '{server_id}' in this app; declared: {', '.join(servers) or '(none)'}."
        )
    server = servers[server_id]
    transport = str(server.get("transport") or ("stdio" if server.get("command") else "streamable_http"))
    if transport == "http":
        server["transport"] = "streamable_http"
    if transport == "stdio" and not server.get("command"):
        raise ToolError(f"config.servers.{server_id}.command: a stdio server needs a command.")
    if transport != "stdio" and not server.get("url"):
        raise ToolError(f"config.servers.{server_id}.url: a {transport} server needs a url.")
    return server


def _infer_risk(tool: Any, override: str | None) -> str:
    if override:
        return override
    notes = getattr(tool, "annotations", None)
    if notes is not None and getattr(notes, "read_only_hint", None):
        return "low"
    if notes is not None and getattr(notes, "destructive_hint", None) is False:
        return "medium"
    return "high"


def _schema(raw: Any) -> dict[str, Any]:
    """The server's input schema if it is a valid object schema, else a permissive object one."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if not isinstance(raw, dict) or raw.get("type", "object") != "object":
        return {"type": "object"}
    try:
        Draft202012Validator.check_schema(raw)
    except SchemaError:
        return {"type": "object"}
    return {**raw, "type": "object"}


def _block(item: Any) -> dict[str, Any]:
    try:
        return item.model_dump(mode="json", by_alias=True, exclude_none=True)
    except AttributeError:
        return {"type": "unknown", "value": str(item)}


def _call(app_id: str, server_id: str, server: dict[str, Any], tool_name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    from tooling.modules.mcp.pool import McpUnavailable

    async def op(client: Any) -> Any:
        return await client.call_tool(tool_name, arguments or {})

    try:
        result = _pool().request(app_id, server_id, server, op)
    except McpUnavailable as exc:
        raise ToolError(str(exc))
    except Exception as exc:  # noqa: BLE001 - protocol errors of the server (unknown tool, bad params)
        raise ToolError(f"MCP server '{server_id}' refused '{tool_name}': {_message(exc)}")
    blocks = [_block(b) for b in result.content or []]
    text = "\n".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    if result.is_error:
        raise ToolError(f"MCP tool '{server_id}.{tool_name}' failed: {text or 'no message'}", data={"content": blocks})
    out: dict[str, Any] = {"content": blocks, "text": text}
    if result.structured_content is not None:
        out["structured"] = result.structured_content
    return out


def _message(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _message(exc.exceptions[0])
    return (getattr(exc, "message", None) or str(exc) or type(exc).__name__)[:500]


class McpModule(Module):
    id = "mcp"
    description = "Tools, resources and prompts of the Model Context Protocol servers the app declares."
    virtual_prefix: ClassVar[str] = "mcp_"
    # Its own actions (list_servers, call_tool, ...) are callable by name but not listed or searched:
    # the servers' tools, as mcp_<server>.*, are what an agent looks for (the original hides it too).
    hidden: ClassVar[bool] = True
    config_schema = {
        "type": "object",
        "properties": {
            "servers": {
                "type": "object",
                "propertyNames": {"pattern": SERVER_ID},
                "additionalProperties": _SERVER_SCHEMA,
            },
        },
        "additionalProperties": False,
    }

    # -- virtual modules (registry hook) --------------------------------------------------------
    @classmethod
    def virtual_module_ids(cls, config: dict[str, Any]) -> list[str]:
        """The ``mcp_<server>`` ids an app's config declares (no I/O: the compiler may call it)."""
        return [f"{cls.virtual_prefix}{server_id}" for server_id in _servers(config or {})]

    @classmethod
    def virtual_modules(cls, app_id: str, config: dict[str, Any]) -> dict[str, tuple[str, dict[str, ActionSpec]]]:
        """``mcp_<server>`` → (description, actions) for every declared server that answers.

        Connects (lazily, once per process) to list the tools; a server that cannot be reached is
        left out and logged, its error shown by ``mcp.list_servers``.
        """
        from tooling.modules.mcp.pool import McpUnavailable

        out: dict[str, tuple[str, dict[str, ActionSpec]]] = {}
        servers: dict[str, dict[str, Any]] = {}
        for server_id in _servers(config or {}):
            try:
                servers[server_id] = _server_config(config, server_id)
            except ToolError as exc:
                log.warning("mcp: app %s server %s is misconfigured: %s", app_id, server_id, exc)
        try:
            listed = _pool().tools_many(app_id, servers)
        except McpUnavailable as exc:
            log.warning("mcp: app %s: servers did not answer: %s", app_id, exc)
            listed = {}
        for server_id, server in servers.items():
            tools = listed.get(server_id)
            if not isinstance(tools, list):
                log.warning("mcp: app %s server %s has no tools now: %s", app_id, server_id, tools)
                continue
            actions: dict[str, ActionSpec] = {}
            for tool in tools:
                name = str(getattr(tool, "name", ""))
                if not _TOOL_NAME.match(name) or name in actions:
                    log.warning("mcp: app %s server %s: tool name %r skipped", app_id, server_id, name[:80])
                    continue
                risk = _infer_risk(tool, server.get("risk_level"))
                description = " ".join(str(getattr(tool, "description", "") or name).split())[:MAX_DESCRIPTION]
                actions[name] = ActionSpec(
                    name=name,
                    description=description,
                    parameters=_schema(getattr(tool, "input_schema", None)),
                    risk_level=risk,
                    side_effects=("external_api_call",) if risk == "low" else ("external_api_call", "state_mutation"),
                    irreversible=risk == "high",
                    aliases=(name.replace("_", " "),) if "_" in name else (),
                    tags=("mcp", server_id),
                    method="",
                )
            summary = str(server.get("description") or f"Tools of the MCP server '{server_id}'.")
            out[f"{cls.virtual_prefix}{server_id}"] = (summary, actions)
        return out

    @classmethod
    def virtual_class(cls, module_id: str) -> type[Module]:
        return _virtual_class(module_id[len(cls.virtual_prefix):])

    # -- helpers ---------------------------------------------------------------------------------
    def _server(self, server_id: str) -> dict[str, Any]:
        return _server_config(self.config, server_id)

    def _request(self, server_id: str, op) -> Any:
        from tooling.modules.mcp.pool import McpUnavailable

        server = self._server(server_id)
        try:
            return _pool().request(self.context.app_id, server_id, server, op)
        except McpUnavailable as exc:
            raise ToolError(str(exc))
        except ToolError:
            raise
        except Exception as exc:  # noqa: BLE001 - the server's protocol error
            raise ToolError(f"MCP server '{server_id}': {_message(exc)}")

    # -- actions ---------------------------------------------------------------------------------
    @action(
        description="List the app's MCP servers with their status, transport and tool count.",
        aliases=("servers", "mcp_servers", "lister_serveurs"),
        tags=("mcp", "servers"),
    )
    def list_servers(self) -> dict[str, Any]:
        servers = []
        for server_id, server in _servers(self.config).items():
            transport = server.get("transport") or ("stdio" if server.get("command") else "streamable_http")
            servers.append({"server_id": server_id, "module": f"mcp_{server_id}", "transport": transport,
                            **_pool().status(self.context.app_id, server_id)})
        return {"servers": servers, "count": len(servers)}

    @action(
        description="Check that one MCP server (or every one) answers; starts it when it is not running.",
        parameters={"properties": {"server_id": _SERVER}},
        aliases=("ping", "health", "verifier", "sante"),
        tags=("mcp", "servers"),
    )
    def health_check(self, server_id: str | None = None) -> dict[str, Any]:
        targets = [server_id] if server_id else list(_servers(self.config))
        results = []
        for target in targets:
            try:
                tools = self.list_tools(target)
                results.append({"server_id": target, "healthy": True, "tools_count": len(tools["tools"])})
            except ToolError as exc:
                if server_id:
                    raise
                results.append({"server_id": target, "healthy": False, "error": exc.message})
        return {"servers": results, "healthy": all(r["healthy"] for r in results)}

    @action(
        description="Start (connect to) a declared MCP server now instead of on first use.",
        parameters={"properties": {"server_id": _SERVER}, "required": ["server_id"]},
        risk_level="medium",
        side_effects=("process_exec", "network_request"),
        aliases=("start", "connecter", "demarrer"),
        tags=("mcp", "servers"),
    )
    def connect(self, server_id: str) -> dict[str, Any]:
        tools = self.list_tools(server_id)
        return {"server_id": server_id, "status": "connected", "tools_count": len(tools["tools"])}

    @action(
        description="Stop the connection to an MCP server (it starts again on next use).",
        parameters={"properties": {"server_id": _SERVER}, "required": ["server_id"]},
        side_effects=("state_mutation",),
        aliases=("stop", "deconnecter", "arreter"),
        tags=("mcp", "servers"),
    )
    def disconnect(self, server_id: str) -> dict[str, Any]:
        self._server(server_id)
        stopped = _pool().stop(self.context.app_id, server_id)
        return {"server_id": server_id, "stopped": bool(stopped)}

    @action(
        description="Restart the connection to an MCP server (after it failed or was changed).",
        parameters={"properties": {"server_id": _SERVER}, "required": ["server_id"]},
        risk_level="medium",
        side_effects=("process_exec", "network_request"),
        aliases=("restart", "reconnecter", "redemarrer"),
        tags=("mcp", "servers"),
    )
    def reconnect(self, server_id: str) -> dict[str, Any]:
        self._server(server_id)
        _pool().stop(self.context.app_id, server_id)
        return self.connect(server_id)

    @action(
        description="List the tools an MCP server exposes, with descriptions and input schemas.",
        parameters={"properties": {"server_id": _SERVER}, "required": ["server_id"]},
        aliases=("tools", "outils", "lister_outils"),
        tags=("mcp", "tools"),
    )
    def list_tools(self, server_id: str) -> dict[str, Any]:
        from tooling.modules.mcp.pool import McpUnavailable

        server = self._server(server_id)
        try:
            tools = _pool().tools(self.context.app_id, server_id, server)
        except McpUnavailable as exc:
            raise ToolError(str(exc))
        return {
            "server_id": server_id,
            "tools": [
                {"name": t.name, "description": (t.description or "")[:MAX_DESCRIPTION],
                 "input_schema": t.input_schema, "risk_level": _infer_risk(t, server.get("risk_level"))}
                for t in tools
            ],
        }

    @action(
        description="Call a tool of an MCP server by name with arguments (prefer the mcp_<server>.<tool> tools).",
        parameters={
            "properties": {
                "server_id": _SERVER,
                "tool_name": {"type": "string", "minLength": 1, "maxLength": 256},
                "arguments": _ARGS,
            },
            "required": ["server_id", "tool_name"],
        },
        risk_level="high",
        side_effects=("external_api_call", "state_mutation"),
        aliases=("call", "invoke", "run_tool", "appeler", "executer_outil"),
        tags=("mcp", "tools"),
    )
    def call_tool(self, server_id: str, tool_name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        return _call(self.context.app_id, server_id, self._server(server_id), tool_name, arguments or {})

    @action(
        description="List the resources (documents, data) an MCP server exposes.",
        parameters={"properties": {"server_id": _SERVER}, "required": ["server_id"]},
        aliases=("resources", "ressources"),
        tags=("mcp", "resources"),
    )
    def list_resources(self, server_id: str) -> dict[str, Any]:
        result = self._request(server_id, lambda client: client.list_resources())
        return {"server_id": server_id, "resources": [_block(r) for r in result.resources]}

    @action(
        description="Read one resource of an MCP server by its URI.",
        parameters={
            "properties": {"server_id": _SERVER, "uri": {"type": "string", "minLength": 1, "maxLength": 2048}},
            "required": ["server_id", "uri"],
        },
        aliases=("resource", "lire_ressource"),
        tags=("mcp", "resources"),
    )
    def read_resource(self, server_id: str, uri: str) -> dict[str, Any]:
        result = self._request(server_id, lambda client: client.read_resource(uri))
        contents = [_block(c) for c in result.contents]
        return {"server_id": server_id, "uri": uri, "contents": contents,
                "text": "\n".join(c.get("text", "") for c in contents if "text" in c)}

    @action(
        description="List the prompt templates an MCP server offers.",
        parameters={"properties": {"server_id": _SERVER}, "required": ["server_id"]},
        aliases=("prompts", "templates", "modeles"),
        tags=("mcp", "prompts"),
    )
    def list_prompts(self, server_id: str) -> dict[str, Any]:
        result = self._request(server_id, lambda client: client.list_prompts())
        return {"server_id": server_id, "prompts": [_block(p) for p in result.prompts]}

    @action(
        description="Get a prompt template of an MCP server with its arguments filled in.",
        parameters={
            "properties": {
                "server_id": _SERVER,
                "prompt_name": {"type": "string", "minLength": 1, "maxLength": 256},
                "arguments": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "required": ["server_id", "prompt_name"],
        },
        aliases=("prompt", "template", "modele"),
        tags=("mcp", "prompts"),
    )
    def get_prompt(self, server_id: str, prompt_name: str, arguments: dict[str, str] | None = None) -> dict[str, Any]:
        result = self._request(server_id, lambda client: client.get_prompt(prompt_name, arguments or {}))
        return {"server_id": server_id, "prompt_name": prompt_name,
                "description": result.description, "messages": [_block(m) for m in result.messages]}


class McpServerModule(Module):
    """The module behind ``mcp_<server>``: each call goes to that server's tool of the same name.

    Its actions are not declared in code; the index gets them from :meth:`McpModule.virtual_modules`
    and validates params against the server's schema before the call arrives here.
    """

    server_id: ClassVar[str] = ""

    def invoke_action(self, action_name: str, params: dict[str, Any]) -> Any:
        config = self.context.app_modules.get("mcp") or {}
        return _call(self.context.app_id, self.server_id, _server_config(config, self.server_id), action_name, params)


@cache
def _virtual_class(server_id: str) -> type[Module]:
    return type(f"McpServer_{server_id}", (McpServerModule,), {"server_id": server_id, "__module__": __name__})


def stop_app_connections(app_id: str) -> int:
    """Close an undeployed app's MCP connections (``tooling.receivers`` calls it on undeploy)."""
    return _pool().stop(app_id)
