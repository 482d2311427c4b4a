"""Paths into a manifest and the collector every compiler stage reports problems to.

A path is a tuple of mapping keys (str) and list indexes (int); it is shown the way a person reads
YAML: ``agents[0].brain.temperature``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            out += f".{seg}" if out else str(seg)
    return out


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """' did you mean 'x'?' or ' expected one of: a, b' -- always a hint the reader can act on."""
    options = sorted(set(choices))
    if isinstance(word, str):
        close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
        if not close:
            # A case slip ("Filesystem") is not close enough for difflib's ratio on short words.
            close = [o for o in options if o.lower() == word.lower()][:1]
        if close:
            return f"did you mean '{close[0]}'?"
    if not options:
        return "nothing is allowed here"
    return "expected one of: " + ", ".join(options)


def describe_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


@dataclass
class Problems:
    errors: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[tuple[Path, str]] = field(default_factory=list)

    def error(self, path: Path, message: str) -> None:
        self.errors.append((tuple(path), message))

    def warn(self, path: Path, message: str) -> None:
        self.warnings.append((tuple(path), message))

    def __bool__(self) -> bool:  # truthy when there is at least one error
        return bool(self.errors)


class PathMap:
    """Translates canonical paths back to where the author wrote the value (legacy manifests).

    The alias pass moves ``execution.max_turns`` to ``runtime.max_turns``; an error found on the
    canonical tree must still point at ``execution.max_turns`` or the author cannot find it.
    """

    def __init__(self) -> None:
        self._prefixes: dict[Path, Path] = {}

    def add(self, canonical: Path, original: Path) -> None:
        self._prefixes[tuple(canonical)] = tuple(original)

    def to_original(self, path: Path) -> Path:
        for size in range(len(path), -1, -1):
            original = self._prefixes.get(path[:size])
            if original is not None:
                return original + path[size:]
        return path
