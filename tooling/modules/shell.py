"""shell: run one command line in the workspace with a timeout, an output cap and command lists.

Config: ``workspace`` (default: the filesystem module's workspace, else the app's own folder),
``timeout`` (default seconds, 30), ``max_timeout`` (cap on the ``timeout`` param, 600),
``max_output_bytes`` (per stream, 64 KiB), ``allowed_commands`` / ``blocked_commands`` (program names
checked on every simple command of the line), ``env`` (extra environment variables).

The command runs under ``/bin/sh -c`` in its own process group with a clean environment (the
daemon's variables, API key and encryption keys included, are not inherited). On timeout or when the
caller's ``cancel_check`` says so, the whole group gets SIGTERM, then SIGKILL after a short grace.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

from tooling.modules._workspace import relative, resolve_in, workspace_root
from tooling.modules.base import Module, ToolError, action

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_TIMEOUT = 600.0
DEFAULT_MAX_OUTPUT = 64 * 1024
_OPERATORS = {";", "&&", "||", "|", "&", "(", ")", "\n", ";;", "|&"}
_POLL_SECONDS = 0.05
_KILL_GRACE_SECONDS = 1.0


def command_programs(command: str) -> list[str]:
    """Program names of every simple command in a shell line (``a && b | c`` → [a, b, c])."""
    lexer = shlex.shlex(command.replace("\n", " ; "), posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise ToolError(f"params.command: cannot be parsed ({exc}).")
    programs: list[str] = []
    expect_program = True
    for token in tokens:
        if token in _OPERATORS or set(token) <= set(";&|()"):
            expect_program = True
            continue
        if expect_program:
            if "=" in token and not token.startswith("=") and token.split("=", 1)[0].isidentifier():
                continue  # VAR=value prefix
            programs.append(os.path.basename(token))
            expect_program = False
    return programs


class _Capped:
    """Reads a pipe to the end, keeping at most ``cap`` bytes (so the child never blocks on a full pipe)."""

    def __init__(self, stream: IO[bytes], cap: int):
        self.stream, self.cap = stream, cap
        self.data = bytearray()
        self.total = 0
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for chunk in iter(lambda: self.stream.read1(65536), b""):
            self.total += len(chunk)
            room = self.cap - len(self.data)
            if room > 0:
                self.data.extend(chunk[:room])

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=_KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class ShellModule(Module):
    id = "shell"
    description = "Run shell commands in the app's workspace."
    config_schema = {
        "type": "object",
        "properties": {
            "workspace": {"type": "string"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "default": DEFAULT_TIMEOUT},
            "max_timeout": {"type": "number", "exclusiveMinimum": 0, "default": DEFAULT_MAX_TIMEOUT},
            "max_output_bytes": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_OUTPUT},
            "allowed_commands": {"type": "array", "items": {"type": "string"}},
            "blocked_commands": {"type": "array", "items": {"type": "string"}},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "additionalProperties": False,
    }

    def _root(self) -> Path:
        configured = self.config.get("workspace") or self.context.app_modules.get("filesystem", {}).get(
            "workspace"
        )
        return workspace_root(self.context.app_id, configured)

    def _check_lists(self, command: str) -> None:
        allowed = self.config.get("allowed_commands")
        blocked = set(self.config.get("blocked_commands") or ())
        programs = command_programs(command)
        if not programs:
            raise ToolError("params.command: empty command.")
        for program in programs:
            if program in blocked:
                raise ToolError(f"params.command: '{program}' is in this app's shell.blocked_commands.")
        if allowed is not None:
            if "$(" in command or "`" in command:
                raise ToolError(
                    "params.command: command substitution ($(...) or backticks) is refused when "
                    "shell.allowed_commands is set, because the programs it runs cannot be checked."
                )
            for program in programs:
                if program not in allowed:
                    raise ToolError(
                        f"params.command: '{program}' is not in this app's shell.allowed_commands ({', '.join(allowed)})."
                    )

    @action(
        description="Run a shell command line in the workspace (or a sub-folder) and return its exit code and output.",
        parameters={
            "properties": {
                "command": {"type": "string", "minLength": 1},
                "timeout": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "Seconds before the command is killed.",
                },
                "cwd": {"type": "string", "default": ".", "description": "Folder relative to the workspace."},
            },
            "required": ["command"],
        },
        risk_level="high",
        side_effects=("process_exec", "filesystem_write", "network_request"),
        irreversible=True,
        aliases=(
            "exec",
            "execute",
            "bash",
            "sh",
            "terminal",
            "command",
            "commande",
            "executer",
            "run_command",
        ),
        tags=("shell", "process", "command"),
    )
    def run(self, command: str, timeout: float | None = None, cwd: str = ".") -> dict[str, Any]:
        self._check_lists(command)
        root = self._root()
        workdir = resolve_in(root, cwd, field="cwd")
        if not workdir.is_dir():
            raise ToolError(f"params.cwd: '{cwd}' is not a folder in the workspace.")
        limit = float(timeout or self.config.get("timeout") or DEFAULT_TIMEOUT)
        limit = min(limit, float(self.config.get("max_timeout") or DEFAULT_MAX_TIMEOUT))
        cap = int(self.config.get("max_output_bytes") or DEFAULT_MAX_OUTPUT)
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(root),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PWD": str(workdir),
            **{str(k): str(v) for k, v in (self.config.get("env") or {}).items()},
        }
        started = time.monotonic()
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        out, err = _Capped(proc.stdout, cap), _Capped(proc.stderr, cap)
        timed_out = cancelled = False
        try:
            while proc.poll() is None:
                if time.monotonic() - started >= limit:
                    timed_out = True
                    break
                if self.context.cancelled():
                    cancelled = True
                    break
                time.sleep(_POLL_SECONDS)
        finally:
            if proc.poll() is None or timed_out or cancelled:
                _kill_group(proc)
            proc.wait()
            # Grandchildren that kept the pipes open were killed with the group, so these end.
            out.thread.join(timeout=2)
            err.thread.join(timeout=2)
        result = {
            "command": command,
            "cwd": relative(root, workdir),
            "exit_code": proc.returncode,
            "stdout": out.text(),
            "stderr": err.text(),
            "timed_out": timed_out,
            "cancelled": cancelled,
            "truncated": out.total > cap or err.total > cap,
            "duration_seconds": round(time.monotonic() - started, 3),
        }
        if timed_out:
            raise ToolError(
                f"params.timeout: the command was killed after {limit:g} s (raise 'timeout', up to "
                f"{self.config.get('max_timeout') or DEFAULT_MAX_TIMEOUT:g} s).",
                data=result,
            )
        if cancelled:
            raise ToolError("The command was cancelled and its processes were terminated.", data=result)
        if proc.returncode != 0:
            tail = (result["stderr"] or result["stdout"])[-500:].strip()
            raise ToolError(f"The command exited with code {proc.returncode}: {tail}", data=result)
        return result
