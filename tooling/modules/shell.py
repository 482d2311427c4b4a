"""shell: run one command line in the workspace, isolated, with a timeout, an output cap and command lists.

Config: ``workspace`` (default: the filesystem module's workspace, else the app's own folder),
``timeout`` (default seconds, 30), ``max_timeout`` (cap on the ``timeout`` param, 600),
``max_output_bytes`` (per stream, 64 KiB), ``allowed_commands`` / ``blocked_commands`` (program names
checked on every simple command of the line as /bin/sh reads it, see :mod:`tooling.sandbox`),
``env`` (extra environment variables), ``network`` (default false: no network inside the sandbox),
``limits`` (``cpu_seconds``, ``memory_mb``, ``max_processes``, ``max_file_mb``).

The command runs under ``/bin/sh -c`` inside a bubblewrap sandbox (:mod:`tooling.sandbox`): only the
workspace is writable, the data dir and the daemon's environment and processes are out of sight,
and on timeout or cancel the whole sandbox is killed (every descendant, ``setsid`` ones included).
When bubblewrap cannot isolate, the action refuses unless the operator set
``DIGITORN_SHELL_SANDBOX=off``. The action is published as ``shell.run`` and ``shell.bash``.
"""

from __future__ import annotations

import math
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

from django.conf import settings

from tooling import sandbox
from tooling.modules._workspace import relative, resolve_in, workspace_root
from tooling.modules.base import Module, ToolError, action

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_TIMEOUT = 600.0
DEFAULT_MAX_OUTPUT = 64 * 1024
_POLL_SECONDS = 0.05
DEFAULT_LIMITS = {"memory_mb": 2048, "max_processes": 256, "max_file_mb": 1024}


def command_programs(command: str) -> list[str]:
    """Program names of every simple command in a shell line, as /bin/sh would run them."""
    try:
        return sandbox.command_programs(command)
    except sandbox.ShParseError as exc:
        raise ToolError(
            f"params.command: cannot be checked against this app's command lists ({exc}); "
            "write it as plain commands."
        )


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
            "network": {"type": "boolean", "default": False},
            "limits": {
                "type": "object",
                "properties": {
                    "cpu_seconds": {"type": "integer", "minimum": 1},
                    "memory_mb": {"type": "integer", "minimum": 16},
                    "max_processes": {"type": "integer", "minimum": 1},
                    "max_file_mb": {"type": "integer", "minimum": 1},
                },
                "additionalProperties": False,
            },
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
        if allowed is None and not blocked:
            return  # nothing to check; the sandbox is the boundary
        programs = command_programs(command)
        if not programs:
            raise ToolError("params.command: empty command.")
        for program in programs:
            if os.path.basename(program) in blocked:
                raise ToolError(
                    f"params.command: '{os.path.basename(program)}' is in this app's shell.blocked_commands."
                )
        if allowed is not None:
            for program in programs:
                base = os.path.basename(program)
                if base not in allowed:
                    raise ToolError(
                        f"params.command: '{base}' is not in this app's shell.allowed_commands ({', '.join(allowed)})."
                    )
                if "/" in program and not os.path.normpath(program).startswith(("/usr/", "/bin/", "/sbin/")):
                    raise ToolError(
                        f"params.command: '{program}' runs a program by path outside the read-only system "
                        "folders; with shell.allowed_commands, name the program without a path."
                    )

    def _limits(self, timeout: float) -> sandbox.Limits:
        conf = {**DEFAULT_LIMITS, **(self.config.get("limits") or {})}
        return sandbox.Limits(
            # CPU time of each process: a little above the wall-clock limit, so busy loops end too.
            cpu_seconds=int(conf.get("cpu_seconds") or math.ceil(timeout) + 5),
            memory_bytes=int(conf["memory_mb"]) * 1024 * 1024,
            max_processes=int(conf["max_processes"]),
            max_file_bytes=int(conf["max_file_mb"]) * 1024 * 1024,
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
                "description": {"type": "string", "description": "What the command does, for the log."},
            },
            "required": ["command"],
        },
        param_aliases={"timeout_seconds": "timeout", "workdir": "cwd"},
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
    def run(
        self, command: str, timeout: float | None = None, cwd: str = ".", description: str | None = None
    ) -> dict[str, Any]:
        self._check_lists(command)
        try:
            sandbox.require()
        except sandbox.SandboxUnavailable as exc:
            raise ToolError(f"shell: {exc}")
        root = self._root()
        workdir = resolve_in(root, cwd, field="cwd")
        if not workdir.is_dir():
            raise ToolError(f"params.cwd: '{cwd}' is not a folder in the workspace.")
        limit = float(timeout or self.config.get("timeout") or DEFAULT_TIMEOUT)
        limit = min(limit, float(self.config.get("max_timeout") or DEFAULT_MAX_TIMEOUT))
        cap = int(self.config.get("max_output_bytes") or DEFAULT_MAX_OUTPUT)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(root),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PWD": str(workdir),
            "TMPDIR": "/tmp",
            **{str(k): str(v) for k, v in (self.config.get("env") or {}).items()},
        }
        limits = self._limits(limit)
        argv = ["/bin/sh", "-c", command]
        if sandbox.mode() != "off":
            data_dir = Path(os.path.realpath(settings.DATA_DIR))
            argv = sandbox.bwrap_argv(
                workspace=root,
                workdir=workdir,
                env=env,
                hidden=(data_dir,),
                network=bool(self.config.get("network")),
                max_processes=limits.max_processes,
            ) + argv
        started = time.monotonic()
        cgroup = sandbox.CommandCgroup(limits)
        cgroup_fds = tuple(cgroup.join_fds())
        try:
            proc = subprocess.Popen(
                argv,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=sandbox.preexec(limits, cgroup_fds),
                pass_fds=cgroup_fds,
            )
        except BaseException:
            cgroup.close()
            raise
        finally:
            for fd in cgroup_fds:
                os.close(fd)
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
            # Killing bwrap's group kills the sandbox's PID 1, and with it every process of the
            # namespace; once bwrap has exited on its own the namespace is already gone. Without
            # the sandbox, a finished sh may leave background children in its group: kill them too.
            if proc.poll() is None or sandbox.mode() == "off":
                sandbox.kill_tree(proc.pid)
            proc.wait()
            out.thread.join(timeout=2)
            err.thread.join(timeout=2)
            cgroup.close()
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
