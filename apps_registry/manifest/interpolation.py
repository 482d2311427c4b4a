"""``{{env.VAR}}``, ``{{env.VAR ?? 'default'}}`` and ``{{secret.KEY}}`` in string values.

* ``env`` references are substituted at compile time from the ``environ`` the caller passes (the
  process environment by default). An unset variable without a default is an error naming the path
  and the variable. A string that was produced by interpolation may then be read as a number or a
  boolean where the schema wants one (``timeout: "{{env.T ?? '30'}}"`` compiles to ``30.0``).
* ``secret`` references are **never** substituted at compile time, whatever holds the value. The
  marker is kept, normalised to ``{{secret.KEY}}``, and ``KEY`` is recorded in ``secret_refs``; the
  caller resolves it in memory with ``CompiledApp.with_secrets`` when it runs the app. The app's
  secret store is the first source; an environment variable of the same name is the fallback the
  caller may use, which is why a KEY found in neither ``secrets`` nor ``environ`` is reported in
  ``missing_secrets`` (a warning for the deploy, not a compile error). Keeping the marker in every
  case is what guarantees that ``CompiledApp.to_dict()`` -- the stored form -- holds no plaintext.
* Any other ``{{namespace.name}}`` is an error. Text in braces without a ``namespace.`` prefix
  (``{{user}}`` in a prompt) is left alone.

An environment value is substituted verbatim and not scanned again, so a value cannot inject markers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .problems import Path, Problems

_REFERENCE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\.(.*?)\}\}", re.DOTALL)
_ENV = re.compile(r"""^([A-Za-z_][A-Za-z0-9_]*)\s*(?:\?\?\s*(?:'([^']*)'|"([^"]*)")\s*)?$""")
_SECRET = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*$")
NAMESPACES = ("env", "secret")
# Variable names that suggest the value is a credential; substituting one stores it in plain text.
_SENSITIVE = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|PRIVATE", re.IGNORECASE)


@dataclass
class Interpolated:
    tree: Any
    # path -> the template as written, for every string that had an env reference substituted
    templates: dict[Path, str] = field(default_factory=dict)
    secret_refs: list[str] = field(default_factory=list)


def interpolate(tree: Any, *, environ: Mapping[str, str], problems: Problems) -> Interpolated:
    result = Interpolated(tree=None)
    result.tree = _walk(tree, (), environ, problems, result)
    return result


def _walk(
    value: Any, path: Path, environ: Mapping[str, str], problems: Problems, result: Interpolated
) -> Any:
    if isinstance(value, dict):
        return {k: _walk(v, (*path, k), environ, problems, result) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, (*path, i), environ, problems, result) for i, v in enumerate(value)]
    if isinstance(value, str) and "{{" in value:
        return _string(value, path, environ, problems, result)
    return value


def _string(
    text: str, path: Path, environ: Mapping[str, str], problems: Problems, result: Interpolated
) -> str:
    used_env = False

    def replace(match: re.Match) -> str:
        nonlocal used_env
        namespace, body = match.group(1), match.group(2)
        written = match.group(0)
        if namespace == "env":
            parsed = _ENV.match(body.strip())
            if not parsed:
                problems.error(
                    path,
                    f"malformed reference {written}; write {{{{env.VAR}}}} or {{{{env.VAR ?? 'default'}}}} "
                    "(the default in single or double quotes)",
                )
                return written
            name, single, double = parsed.groups()
            default = single if single is not None else double
            used_env = True
            if name in environ:
                if _SENSITIVE.search(name):
                    problems.warn(
                        path,
                        f"{written} is substituted at compile time and stored in plain text with the app; "
                        f"use {{{{secret.{name}}}}} to keep it out of storage",
                    )
                return environ[name]
            if default is not None:
                return default
            problems.error(
                path,
                f"environment variable {name} is not set (referenced as {written}); set it, or give a "
                f"default: {{{{env.{name} ?? 'value'}}}}",
            )
            return written
        if namespace == "secret":
            parsed = _SECRET.match(body.strip())
            if not parsed:
                problems.error(
                    path,
                    f"malformed reference {written}; write {{{{secret.KEY}}}} (KEY: letters, digits, "
                    "underscores; secrets take no default)",
                )
                return written
            key = parsed.group(1)
            if key not in result.secret_refs:
                result.secret_refs.append(key)
            return f"{{{{secret.{key}}}}}"
        problems.error(
            path,
            f"unknown interpolation namespace '{namespace}' in {written}; use {{{{env.VAR}}}} or {{{{secret.KEY}}}}",
        )
        return written

    out = _REFERENCE.sub(replace, text)
    if used_env:
        result.templates[path] = text
    return out


def describe_template(path: Path, templates: Mapping[Path, str], value: Any) -> str:
    """' ('{{env.T}}' resolved to 'abc')' for messages about a value that came from interpolation."""
    template = templates.get(path)
    if template is None:
        return ""
    return f" ({template!r} resolved to {value!r})"
