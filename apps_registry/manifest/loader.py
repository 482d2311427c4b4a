"""Manifest text -> plain JSON-compatible Python data, refusing what a hostile or sloppy file can do.

Limits, each reported with a message that names the limit:

* at most ``MAX_MANIFEST_BYTES`` of UTF-8 (a leading BOM is dropped);
* one YAML document, whose top level is a mapping;
* nesting at most ``MAX_DEPTH`` levels deep and at most ``MAX_NODES`` nodes *after* alias expansion.
  Anchors and aliases (and ``<<`` merge keys) stay usable for sharing a brain block between agents,
  but a "billion laughs" file is refused from the node graph, before anything expands it;
* no recursive aliases, no duplicate keys, no custom tags, only JSON types (strings, numbers,
  booleans, null, lists, mappings with string keys). Dates are not resolved: ``version: 2024-05-01``
  stays the string the author wrote.

Every problem is a :class:`ManifestError` item ``{"path", "message"}``; syntax errors also carry
``line`` and ``column`` (1-based) and say them in the message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import yaml
from yaml import events as ev
from yaml import nodes as yn

from digitorn_site.errors import ManifestError

from .problems import Path, describe_type, format_path

MAX_MANIFEST_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000

_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"
_STR = "tag:yaml.org,2002:str"
_BOOL = "tag:yaml.org,2002:bool"
_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _ManifestLoader(_Base):  # type: ignore[misc, valid-type]
    # Dates as strings: a version or a description that looks like a date must not become a datetime.
    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


@dataclass(frozen=True)
class LoadedManifest:
    data: dict
    text: str
    # path -> (line, column), 1-based, where the key (or list item) starts in the file.
    locations: dict[Path, tuple[int, int]]


class _Refused(Exception):
    def __init__(self, message: str, mark: yaml.Mark | None = None):
        super().__init__(message)
        self.message = message
        self.mark = mark


def _item(message: str, mark: yaml.Mark | None = None, path: str = "") -> dict:
    if mark is None:
        return {"path": path, "message": message}
    line, column = mark.line + 1, mark.column + 1
    return {
        "path": path,
        "message": f"{message} (line {line}, column {column})",
        "line": line,
        "column": column,
    }


def decode(text: str | bytes) -> str:
    if isinstance(text, bytes):
        if len(text) > MAX_MANIFEST_BYTES:
            raise ManifestError([{"path": "", "message": _too_big(len(text))}])
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(
                [
                    {
                        "path": "",
                        "message": f"the manifest is not valid UTF-8 (byte 0x{text[exc.start]:02x} at offset "
                        f"{exc.start}); save the file as UTF-8",
                    }
                ]
            )
    elif isinstance(text, str):
        decoded = text
        size = len(decoded.encode("utf-8", "surrogatepass"))
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError([{"path": "", "message": _too_big(size)}])
    else:
        raise ManifestError(
            [{"path": "", "message": f"the manifest must be text, got {type(text).__name__}"}]
        )
    return decoded.removeprefix("\ufeff")


def _too_big(size: int) -> str:
    return f"the manifest is {size} bytes; the limit is {MAX_MANIFEST_BYTES} bytes (1 MiB)"


def _syntax_error(exc: yaml.YAMLError, text: str) -> ManifestError:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        problem = exc.problem or "invalid YAML"
        if exc.context:
            problem = f"{problem} ({exc.context})"
        line, column = exc.problem_mark.line + 1, exc.problem_mark.column + 1
        return ManifestError(
            [
                {
                    "path": "",
                    "message": f"YAML syntax error at line {line}, column {column}: {problem}",
                    "line": line,
                    "column": column,
                }
            ]
        )
    if isinstance(exc, yaml.reader.ReaderError):
        position = min(max(exc.position, 0), len(text))
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        char = exc.character
        code = (
            char
            if isinstance(char, int)
            else (ord(char) if isinstance(char, str) and len(char) == 1 else None)
        )
        shown = f"U+{code:04X}" if code is not None else repr(char)
        return ManifestError(
            [
                {
                    "path": "",
                    "message": f"YAML syntax error at line {line}, column {column}: {exc.reason} "
                    f"(character {shown} is not allowed in YAML)",
                    "line": line,
                    "column": column,
                }
            ]
        )
    return ManifestError([{"path": "", "message": f"YAML syntax error: {exc}"}])


def _scan(text: str) -> None:
    """Event pass: documents and nesting depth are checked before any node is built."""
    loader = _ManifestLoader(text)
    documents = 0
    depth = 0
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, ev.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise _Refused(
                        "the file holds more than one YAML document (separated by '---'); "
                        "a manifest is exactly one document",
                        event.start_mark,
                    )
            elif isinstance(event, ev.MappingStartEvent | ev.SequenceStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _Refused(f"the manifest nests deeper than {MAX_DEPTH} levels", event.start_mark)
            elif isinstance(event, ev.MappingEndEvent | ev.SequenceEndEvent):
                depth -= 1
    finally:
        loader.dispose()


def _measure(
    node: yn.Node, depth: int, memo: dict[int, tuple[int, int]], active: set[int]
) -> tuple[int, int]:
    """(expanded size, height) of ``node``'s subtree, refusing past the limits.

    Aliases make the node graph share subtrees, so results are memoised per node: the work stays
    linear in the file even when the expansion would be exponential.
    """
    key = id(node)
    if key in memo:
        size, height = memo[key]
    else:
        if key in active:
            raise _Refused("recursive alias: an anchor is used inside itself", node.start_mark)
        if depth > MAX_DEPTH:
            raise _Refused(f"the manifest nests deeper than {MAX_DEPTH} levels", node.start_mark)
        active.add(key)
        if isinstance(node, yn.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yn.SequenceNode):
            children = list(node.value)
        else:
            children = []
        size, height = 1, 0
        for child in children:
            child_size, child_height = _measure(child, depth + 1, memo, active)
            size += child_size
            height = max(height, child_height + 1)
            if size > MAX_NODES:
                raise _Refused(
                    f"the manifest expands to more than {MAX_NODES} YAML nodes once anchors and aliases are "
                    "expanded; refusing it (a possible alias bomb)",
                    node.start_mark,
                )
        active.discard(key)
        memo[key] = (size, height)
    if depth + height > MAX_DEPTH:
        raise _Refused(
            f"the manifest nests deeper than {MAX_DEPTH} levels once aliases are expanded", node.start_mark
        )
    return size, height


def _walk_nodes(
    node: yn.Node, path: Path, locations: dict[Path, tuple[int, int]], problems: list[dict]
) -> None:
    if isinstance(node, yn.SequenceNode):
        for index, child in enumerate(node.value):
            child_path = (*path, index)
            locations.setdefault(child_path, (child.start_mark.line + 1, child.start_mark.column + 1))
            _walk_nodes(child, child_path, locations, problems)
    elif isinstance(node, yn.MappingNode):
        seen: dict[str, yn.Node] = {}
        merged: list[yn.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.extend(value_node.value if isinstance(value_node, yn.SequenceNode) else [value_node])
                continue
            if isinstance(key_node, yn.ScalarNode) and key_node.tag == _BOOL and not key_node.style:
                # YAML 1.1 reads a plain key `on:` (or yes/no/off) as a boolean; a manifest's keys are
                # names, and hooks are written `on: turn_end`, so read the key as the text written.
                key_node.tag = _STR
            if not (isinstance(key_node, yn.ScalarNode) and key_node.tag == _STR):
                continue  # non-string keys are reported on the constructed data
            name = key_node.value
            child_path = (*path, name)
            if name in seen:
                first = seen[name].start_mark.line + 1
                problems.append(
                    _item(
                        f"duplicate key '{name}' (first defined at line {first}); YAML would silently keep "
                        "only the last one",
                        key_node.start_mark,
                        format_path(child_path),
                    )
                )
                continue
            seen[name] = key_node
            locations[child_path] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _walk_nodes(value_node, child_path, locations, problems)
        for source in merged:
            if isinstance(source, yn.MappingNode):
                for key_node, _value in source.value:
                    if (
                        isinstance(key_node, yn.ScalarNode)
                        and key_node.tag == _STR
                        and key_node.value not in seen
                    ):
                        child_path = (*path, key_node.value)
                        locations.setdefault(
                            child_path, (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                        )


_BOOL_WORDS = {True: "true, yes or on", False: "false, no or off"}


def _check_plain(value: object, path: Path, problems: list[dict], locations: dict) -> None:
    """Only JSON types may reach the compiled app (it is stored as JSON)."""
    where = locations.get(path)

    def report(message: str) -> None:
        item = {"path": format_path(path), "message": message}
        if where:
            item["line"], item["column"] = where
        problems.append(item)

    if isinstance(value, dict):
        for key, child in value.items():
            if not isinstance(key, str):
                hint = ""
                if isinstance(key, bool):
                    hint = f" (YAML reads {_BOOL_WORDS[key]} as a boolean)"
                report(f"key {key!r} is a {describe_type(key)}{hint}; mapping keys must be strings, quote it")
                continue
            _check_plain(child, (*path, key), problems, locations)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            _check_plain(child, (*path, index), problems, locations)
    elif isinstance(value, float):
        if not math.isfinite(value):
            report(f"{value} is not a finite number")
    elif value is None or isinstance(value, str | int | bool):
        return
    else:
        report(
            f"values of type {type(value).__name__} are not allowed; use a string, number, boolean, list or mapping"
        )


def load(text: str | bytes) -> LoadedManifest:
    """Parse and check ``text``; raises :class:`ManifestError` on the first stage that fails."""
    decoded = decode(text)
    if not decoded.strip():
        raise ManifestError([{"path": "", "message": "the manifest is empty; it must be a YAML mapping"}])
    locations: dict[Path, tuple[int, int]] = {}
    problems: list[dict] = []
    try:
        _scan(decoded)
        loader = _ManifestLoader(decoded)
        try:
            node = loader.get_single_node()
            if node is None:
                raise _Refused("the manifest is empty; it must be a YAML mapping")
            _measure(node, 0, {}, set())
            # Before construction: the constructor flattens '<<' merges into the nodes in place,
            # which would make merged keys look like duplicates.
            _walk_nodes(node, (), locations, problems)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except _Refused as refused:
        raise ManifestError([_item(refused.message, refused.mark)])
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, decoded)
    except RecursionError:
        raise ManifestError([{"path": "", "message": f"the manifest nests deeper than {MAX_DEPTH} levels"}])
    except (ValueError, IndexError, KeyError, AttributeError) as exc:
        # PyYAML's constructors trust the scalar: an integer over Python's 4300-digit limit, or an
        # explicit tag on a value it does not fit ('!!int' on nothing, '!!bool maybe', '!!timestamp x')
        # raise plain Python errors instead of YAML ones.
        raise ManifestError(
            [
                {
                    "path": "",
                    "message": f"a value could not be read as its YAML type ({type(exc).__name__}: {exc}); "
                    "check explicit tags such as !!int or !!bool, or quote the value to keep it as a string",
                }
            ]
        )

    if not isinstance(data, dict):
        raise ManifestError(
            [
                {
                    "path": "",
                    "message": f"the manifest must be a YAML mapping at the top level, got {describe_type(data)}",
                }
            ]
        )
    _check_plain(data, (), problems, locations)
    if problems:
        raise ManifestError(problems)
    return LoadedManifest(data=data, text=decoded, locations=locations)
