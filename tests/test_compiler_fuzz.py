"""Fuzzing the manifest compiler: whatever text arrives, only a CompileResult or a ManifestError leaves.

Three sources of input, each bounded (hypothesis, no example database so runs do not depend on
earlier ones): YAML-ish text assembled from the characters and tokens that steer a YAML parser
(anchors, aliases, merge keys, tags, flow collections, directives, odd indentation), raw bytes
(invalid UTF-8, BOMs, NULs), and structured mutations of a valid manifest (wrong types, missing keys,
unknown keys, huge or non-finite numbers, unicode, deep nesting, shared nodes dumped as anchors).
A ManifestError must also be usable: at least one item, each with a string path and a message.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps_registry.manifest import CompileResult, compile_manifest
from digitorn_site.errors import ManifestError

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

VALID: dict[str, Any] = {
    "schema_version": 2,
    "app": {"app_id": "fuzz-app", "name": "Fuzz", "version": "1.0", "mode": "conversation"},
    "runtime": {"max_turns": 20, "timeout": 300, "approval_timeout": 300, "rate_limit_rpm": 60},
    "agents": [
        {
            "id": "assistant",
            "name": "Assistant",
            "system_prompt": "You are helpful.",
            "modules": ["filesystem"],
            "brain": {
                "provider": "scripted",
                "config": {"rules": [{"when": "list", "steps": [{"call": "filesystem.ls", "params": {"path": "."}}]},
                                     {"steps": [{"say": "You said: {message}"}]}]},
            },
        },
        {"id": "writer", "brain": {"provider": "openai", "model": "gpt-4o-mini", "temperature": 0.5,
                                   "config": {"api_key": "{{secret.OPENAI_KEY}}"}}},
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
}


def compile_or_refuse(text: str | bytes) -> CompileResult | None:
    """The property: a CompileResult, or a ManifestError whose items a person can act on."""
    try:
        result = compile_manifest(text, secrets={}, environ={})
    except ManifestError as err:
        assert err.errors, "a ManifestError must list at least one problem"
        for item in err.errors:
            assert isinstance(item.get("path"), str), item
            assert isinstance(item.get("message"), str) and item["message"], item
        assert err.status_code == 400 and err.message
        return None
    assert isinstance(result, CompileResult)
    assert result.app.app_id
    return result


def test_the_fuzz_baseline_compiles():
    """The manifest the mutations start from is valid, so mutations probe real validation paths."""
    result = compile_or_refuse(yaml.safe_dump(VALID, sort_keys=False))
    assert result is not None and result.app.app_id == "fuzz-app"
    assert result.missing_secrets == ("OPENAI_KEY",)


# --- 1. YAML-ish text ------------------------------------------------------------------------

YAML_TOKENS = [
    ":", ": ", "-", "- ", "? ", "\n", "\n  ", "\n    ", "\t", " ", "#", "'", '"', "|", ">", "|-", ">+",
    "{", "}", "[", "]", ",", "&a ", "*a", "&b ", "*b", "<<: *a", "<<: ", "!!str ", "!!int ", "!!float ", "!!bool ", "!!null ", "!!timestamp ", "!!binary ", "!!set ", "!!omap ",
    "!!python/object:os.system ", "!custom ", "!<tag:yaml.org,2002:str> ", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n",
    "---\n", "...\n", "~", "null", "true", "no", "yes", "0x1F", "0o17", "1e400", "-.inf", ".nan", "2024-05-01",
    "12:30:00", "1_000", "schema_version", "app", "app_id", "agents", "brain", "provider", "scripted",
    "tools", "modules", "capabilities", "runtime", "max_turns", "{{secret.X}}", "{{env.HOME ?? 'd'}}",
    "{{", "}}", "\x00", "\ufeff", "\u2028", "é", "🤖", "\\u0000", "\\", "=", "@", "`",
]

yaml_ish = st.lists(st.one_of(st.sampled_from(YAML_TOKENS), st.text(max_size=8)), max_size=60).map("".join)


@FUZZ
@given(yaml_ish)
def test_yaml_ish_text_never_escapes(text):
    compile_or_refuse(text)


@FUZZ
@given(st.one_of(st.binary(max_size=400), st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_raw_bytes_never_escape(data):
    compile_or_refuse(data)


@FUZZ
@given(st.text(max_size=300))
def test_valid_manifest_with_garbage_appended_never_escapes(suffix):
    compile_or_refuse(yaml.safe_dump(VALID, sort_keys=False) + suffix)


# --- 2. Structured mutations of a valid manifest ---------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**18, max_value=10**400),
    st.integers(max_value=-(10**18), min_value=-(10**400)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", " ", "{{secret.K}}", "{{env.X}}", "{{env.X ?? 'd'}}", "{{", "scripted", "openai",
                     "filesystem", "filesystem.ls", "approve", "block", "auto", "high", "../../etc/passwd",
                     "a" * 5000, "ü" * 200, "\x00", "🤖🤖"]),
)
garbage = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=12), st.sampled_from(list(VALID) + ["id", "brain", "rules"])),
                        children, max_size=5),
    ),
    max_leaves=25,
)


def _containers(node: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every dict/list in the tree (the root included)."""
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict | list):
                found += _containers(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, dict | list):
                found += _containers(value, (*path, index))
    return found


def _at(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


@st.composite
def mutated_manifests(draw) -> Any:
    data: Any = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        if not isinstance(data, dict | list):
            break
        target = _at(data, draw(st.sampled_from(_containers(data))))
        action = draw(st.sampled_from(["replace", "delete", "add", "nest", "share", "root"]))
        keys = list(target.keys()) if isinstance(target, dict) else list(range(len(target)))
        if action == "root":
            data = draw(garbage)
        elif action == "replace" and keys:
            target[draw(st.sampled_from(keys))] = draw(garbage)
        elif action == "delete" and keys:
            del target[draw(st.sampled_from(keys))]
        elif action == "add":
            if isinstance(target, dict):
                target[draw(st.text(max_size=20))] = draw(garbage)
            else:
                target.append(draw(garbage))
        elif action == "nest" and keys:
            key = draw(st.sampled_from(keys))
            depth = draw(st.integers(min_value=1, max_value=80))
            value: Any = target[key]
            for _level in range(depth):
                value = [value] if draw(st.booleans()) else {"x": value}
            target[key] = value
        elif action == "share" and keys:
            # The same object in two places: yaml.dump writes an anchor and an alias.
            shared = target[draw(st.sampled_from(keys))]
            target[draw(st.sampled_from(keys))] = shared
    return data


def _dump(data: Any, style: str) -> str:
    if style == "safe":
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if style == "flow":
        return yaml.safe_dump(data, default_flow_style=True, allow_unicode=False)
    # yaml.dump keeps shared nodes as &anchors/*aliases (safe_dump does too) and may emit
    # python-specific tags for odd values, which the loader must refuse as custom tags.
    return yaml.dump(data, sort_keys=False)


@FUZZ
@given(mutated_manifests(), st.sampled_from(["safe", "flow", "full"]))
def test_mutated_manifests_never_escape(data, style):
    try:
        text = _dump(data, style)
    except (yaml.YAMLError, RecursionError, ValueError):
        return  # PyYAML itself could not serialize this tree; there is nothing to compile
    compile_or_refuse(text)


# --- 3. Anchors, aliases and merge keys -----------------------------------------------------

@settings(FUZZ, max_examples=60)  # a small space (width x levels x shape); each case builds a big node graph
@given(
    st.integers(min_value=1, max_value=12),
    st.integers(min_value=1, max_value=12),
    st.sampled_from(["list", "merge", "self"]),
)
def test_alias_expansion_is_bounded_and_refused_cleanly(width, levels, shape):
    """Billion-laughs shapes, merge keys and recursive aliases: refused (or compiled) without blowing up."""
    lines = ['schema_version: 2', 'app: {app_id: laughs}', 'x0: &a0 ["lol"]']
    for level in range(1, levels + 1):
        refs = ", ".join([f"*a{level - 1}"] * width)
        if shape == "merge":
            lines.append(f"x{level}: &a{level} {{<<: *a{level - 1}, k{level}: [{refs}]}}"
                         if level > 1 else f"x{level}: &a{level} {{k: [{refs}]}}")
        else:
            lines.append(f"x{level}: &a{level} [{refs}]")
    if shape == "self":
        lines.append("loop: &loop [*loop]")
    lines.append("agents: [{id: a, brain: {provider: scripted}}]")
    result = compile_or_refuse("\n".join(lines) + "\n")
    if width**levels > 10**6:
        assert result is None, "an alias bomb must be refused"


def test_non_finite_and_huge_numbers_are_refused_with_a_path():
    for value in ("1e400", ".inf", "-.inf", ".nan", "9" * 5000):
        text = yaml.safe_dump(VALID, sort_keys=False).replace("max_turns: 20", f"max_turns: {value}")
        assert compile_or_refuse(text) is None, value


def test_explicit_tags_that_do_not_fit_their_value_are_refused():
    """PyYAML raises IndexError/KeyError/AttributeError for these; found by the text fuzzer."""
    for value in ("!!int", "!!float", "!!bool", "!!bool maybe", "!!int x", "!!timestamp x", "!!float x"):
        text = yaml.safe_dump(VALID, sort_keys=False).replace("max_turns: 20", f"max_turns: {value}")
        assert compile_or_refuse(text) is None, value
