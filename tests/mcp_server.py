"""A small real MCP server (official SDK) for the mcp module's tests.

    python tests/mcp_server.py stdio
    python tests/mcp_server.py http PORT     # streamable HTTP at http://127.0.0.1:PORT/mcp
    python tests/mcp_server.py sse PORT      # SSE at http://127.0.0.1:PORT/sse

Tools: ``add`` (read-only), ``note_write`` (additive), ``note_delete`` (destructive), ``whoami``
(the server's pid, to prove reuse and restarts), ``crash`` (the process exits), ``fail`` (a tool
error). A resource ``notes://all`` and a prompt ``summarize``.
"""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

server = MCPServer("notes")
_notes: dict[str, str] = {}


@server.tool(description="Add two integers and return the sum.", annotations=ToolAnnotations(read_only_hint=True))
def add(a: int, b: int) -> int:
    return a + b


@server.tool(description="Store a note under a name.",
             annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
def note_write(name: str, text: str) -> str:
    _notes[name] = text
    return f"saved {name}"


@server.tool(description="Delete a stored note permanently.",
             annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
def note_delete(name: str) -> str:
    _notes.pop(name, None)
    return f"deleted {name}"


@server.tool(description="Process id of this server.", annotations=ToolAnnotations(read_only_hint=True))
def whoami() -> int:
    return os.getpid()


@server.tool(description="Exit the server process at once.")
def crash() -> str:
    os._exit(3)


@server.tool(description="Always fails.")
def fail() -> str:
    raise ValueError("this tool always fails")


@server.resource("notes://all", description="Every note.")
def all_notes() -> str:
    return "\n".join(f"{k}: {v}" for k, v in sorted(_notes.items())) or "(no notes)"


@server.prompt(description="Ask for a summary of a topic.")
def summarize(topic: str) -> str:
    return f"Summarize {topic} in one line."


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if mode == "stdio":
        server.run("stdio")
    elif mode == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("sse", host="127.0.0.1", port=int(sys.argv[2]))
