"""``{{namespace.name}}`` references in string values, as the original Digitorn resolves them.

Compile time:

* ``{{env.VAR}}`` / ``{{env.VAR ?? 'default'}}``: checked against what the manifest may read
  (``environment``: never the daemon's own credentials; ``DIGITORN_MANIFEST_ENV``), substituted
  so that types are checked on the value (``timeout: "{{env.T ?? '30'}}"`` compiles to 30.0), and
  recorded in ``env_refs``. A text value keeps its ``{{env.VAR}}`` marker in the stored app
  (``env_marked``): like a secret, the value is resolved in memory when the app runs and masked in
  outputs. A variable unset at compile time without a default stays a marker (a warning), read
  when the app runs; where a number or boolean is needed, the type check reports it.
* ``{{secret.KEY}}``: never substituted; the marker is kept and ``KEY`` recorded in ``secret_refs``.
* ``{{sys.timestamp|date|time|datetime|platform|hostname|cwd|os|python}}``, ``{{app.id|app_id|name|
  version}}``, ``dev.variables`` (``{{name}}`` or ``{{var.name}}``), and bundle files
  ``{{prompt.X}}`` (``prompts/X.md``), ``{{skill.X}}`` (``skills/X.md``), ``{{behavior.X}}``
  (``behaviors/X.md``) and ``{{asset.X}}`` (``assets/X`` or ``X``) from the files beside the manifest
  (a missing file is a warning and the reference stays as text, so an uploaded manifest deploys).
* Run-time placeholders (``{{event.*}}``, ``{{session.*}}``, ``{{input}}``, ``{{steps[0].output}}``,
  ``{{tool.*}}``, ``{{message.*}}``, ``{{field.*}}``, ...) are left untouched for run time.

A substituted value is not scanned again, so a value cannot inject markers.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .problems import Path, Problems, did_you_mean

_REFERENCE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\.(.*?)\}\}", re.DOTALL)
_BARE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_ENV = re.compile(r"""^([A-Za-z_][A-Za-z0-9_]*)\s*(?:\?\?\s*(?:'([^']*)'|"([^"]*)")\s*)?$""")
_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\-/]*)\s*$")
_SECRET = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*$")
COMPILE_NAMESPACES = ("env", "secret", "sys", "app", "var", "vars", "prompt", "skill", "behavior", "asset")
BUNDLE_DIRS = {"prompt": ("prompts",), "skill": ("skills",), "behavior": ("behaviors", "behavior"), "asset": ("assets", "")}
BUNDLE_SUFFIXES = {"prompt": (".md", ".txt", ""), "skill": (".md", ""), "behavior": (".md", ".yaml", ""), "asset": ("",)}


@dataclass
class Interpolated:
    tree: Any
    # path -> the template as written, for every string that had a compile-time reference substituted
    templates: dict[Path, str] = field(default_factory=dict)
    secret_refs: list[str] = field(default_factory=list)
    env_refs: list[str] = field(default_factory=list)
    # resolved text -> the same text with its {{env.X}} references kept as markers (stored form)
    env_marked: dict[str, str] = field(default_factory=dict)


def _sys_values() -> dict[str, str]:
    now = _dt.datetime.now(_dt.UTC)
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = ""
    return {
        "timestamp": str(int(now.timestamp())),
        "date": now.date().isoformat(),
        "time": now.strftime("%H:%M:%S"),
        "datetime": now.isoformat(timespec="seconds"),
        "year": str(now.year),
        "platform": sys.platform,
        "os": platform.system(),
        "hostname": socket.gethostname(),
        "cwd": cwd,
        "python": platform.python_version(),
    }


def interpolate(
    tree: Any,
    *,
    environ: Mapping[str, str],
    problems: Problems,
    env_refusal: Callable[[str], str | None] = lambda name: None,
    files: Callable[[str], str | None] | None = None,
) -> Interpolated:
    result = Interpolated(tree=None)
    context = _Context(tree, environ, problems, env_refusal, files, result)
    result.tree = context.walk(tree, ())
    return result


class _Context:
    def __init__(self, tree, environ, problems, env_refusal, files, result):
        self.environ = environ
        self.problems = problems
        self.env_refusal = env_refusal
        self.files = files
        self.result = result
        self.sys = _sys_values()
        app = tree.get("app") if isinstance(tree, dict) else None
        app = app if isinstance(app, dict) else {}
        self.app = {
            k: str(v) for k, v in {
                "id": app.get("app_id"), "app_id": app.get("app_id"), "name": app.get("name"),
                "version": app.get("version", "1.0"), "description": app.get("description"),
            }.items() if isinstance(v, str | int | float) and not isinstance(v, bool)
        }
        dev = tree.get("dev") if isinstance(tree, dict) else None
        variables = dev.get("variables") if isinstance(dev, dict) else None
        self.variables = {
            k: v if isinstance(v, str) else str(v)
            for k, v in (variables.items() if isinstance(variables, dict) else ())
            if isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
        }

    def walk(self, value: Any, path: Path) -> Any:
        if isinstance(value, dict):
            return {k: self.walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.walk(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "{{" in value:
            return self.string(value, path)
        return value

    def string(self, text: str, path: Path) -> str:
        substituted = False
        env_used = False

        def resolve(match: re.Match, *, marked: bool) -> str:
            nonlocal substituted, env_used
            namespace, body = match.group(1), match.group(2)
            written = match.group(0)
            if namespace == "env":
                parsed = _ENV.match(body.strip())
                if not parsed:
                    if not marked:
                        self.problems.error(
                            path,
                            f"malformed reference {written}; write {{{{env.VAR}}}} or {{{{env.VAR ?? 'default'}}}} "
                            "(the default in single or double quotes)",
                        )
                    return written
                name, single, double = parsed.groups()
                default = single if single is not None else double
                refused = self.env_refusal(name)
                if refused:
                    if not marked:
                        self.problems.error(path, f"{written}: {refused}")
                    return written
                substituted = env_used = True
                if name not in self.result.env_refs:
                    self.result.env_refs.append(name)
                if marked:
                    return f"{{{{env.{name}}}}}" if default is None else f"{{{{env.{name} ?? '{default}'}}}}"
                if name in self.environ:
                    return self.environ[name]
                if default is not None:
                    return default
                # Unset now: the marker stays and is read when the app runs (the Go port's way); a
                # value that must be a number or a boolean is then reported by the type checks.
                self.problems.warn(
                    path,
                    f"environment variable {name} is not set (referenced as {written}); it is read when the "
                    f"app runs (empty if still unset), or give a default: {{{{env.{name} ?? 'value'}}}}",
                )
                return f"{{{{env.{name}}}}}"
            if namespace == "secret":
                parsed = _SECRET.match(body.strip())
                if not parsed:
                    if not marked:
                        self.problems.error(
                            path,
                            f"malformed reference {written}; write {{{{secret.KEY}}}} (KEY: letters, digits, "
                            "underscores; secrets take no default)",
                        )
                    return written
                key = parsed.group(1)
                if key not in self.result.secret_refs:
                    self.result.secret_refs.append(key)
                return f"{{{{secret.{key}}}}}"
            if namespace not in COMPILE_NAMESPACES:
                return written  # a run-time placeholder ({{event.x}}, {{session.id}}, ...)
            name = body.strip()
            value = self.lookup(namespace, name, written, path, report=not marked)
            if value is None:
                return written
            substituted = True
            return value

        out = _REFERENCE.sub(lambda m: resolve(m, marked=False), text)
        if self.variables:
            out = _BARE.sub(lambda m: self.variables.get(m.group(1), m.group(0)), out)
        if substituted:
            self.result.templates[path] = text
        if env_used:
            marked = _REFERENCE.sub(lambda m: resolve(m, marked=True), text)
            if self.variables:
                marked = _BARE.sub(lambda m: self.variables.get(m.group(1), m.group(0)), marked)
            if marked != out:
                self.result.env_marked[out] = marked
        return out

    def lookup(self, namespace: str, name: str, written: str, path: Path, *, report: bool) -> str | None:
        def error(message: str) -> None:
            if report:
                self.problems.error(path, message)

        if namespace == "sys":
            if name not in self.sys:
                error(f"unknown {written}; {did_you_mean(name, self.sys)}")
                return None
            return self.sys[name]
        if namespace == "app":
            if name not in self.app:
                error(f"unknown {written}; {did_you_mean(name, ('id', 'app_id', 'name', 'version', 'description'))}")
                return None
            return self.app[name]
        if namespace in ("var", "vars"):
            if name not in self.variables:
                error(f"{written}: no variable {name!r} under dev.variables; {did_you_mean(name, self.variables)}")
                return None
            return self.variables[name]
        # bundle files
        if not _NAME.match(name) or ".." in name.split("/") or name.startswith("/"):
            error(f"{written}: a bundle file name is a relative name without '..'")
            return None
        if self.files is None:
            # An uploaded manifest without its files still deploys: the reference stays as text.
            if report:
                self.problems.warn(
                    path, f"{written}: no files beside this manifest, kept as text (upload them in the 'assets' form field)"
                )
            return None
        tried = []
        for folder in BUNDLE_DIRS[namespace]:
            for suffix in BUNDLE_SUFFIXES[namespace]:
                rel = f"{folder}/{name}{suffix}" if folder else f"{name}{suffix}"
                tried.append(rel)
                content = self.files(rel)
                if content is not None:
                    return content
        if report:
            self.problems.warn(path, f"{written}: no file {' or '.join(tried[:3])} beside the manifest, kept as text")
        return None


def restore_env_markers(data: Any, env_marked: Mapping[str, str]) -> Any:
    """``data`` (the compiled app as a dict) with every text that came from ``{{env.X}}`` put back
    as its marker form, so that the stored app holds no environment value."""
    if not env_marked:
        return data
    if isinstance(data, dict):
        return {k: restore_env_markers(v, env_marked) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return type(data)(restore_env_markers(v, env_marked) for v in data)
    if isinstance(data, str):
        return env_marked.get(data, data)
    return data


def describe_template(path: Path, templates: Mapping[Path, str], value: Any) -> str:
    """' ('{{env.T}}' resolved to 'abc')' for messages about a value that came from interpolation."""
    template = templates.get(path)
    if template is None:
        return ""
    if "{{env." in template:
        return f" (from {template!r})"  # never echo an environment value
    return f" ({template!r} resolved to {value!r})"


_ENV_NAME = re.compile(r"\{\{\s*env\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")


def env_names(text: str | bytes) -> list[str]:
    """Every VAR a manifest text names as ``{{env.VAR}}`` (a cheap scan, before compiling)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return _ENV_NAME.findall(text)
