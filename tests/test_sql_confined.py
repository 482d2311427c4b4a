"""SQL stays in one place: no module outside ``digitorn_site/fastsql.py`` opens a cursor on the
project's database or holds SQL text (issue #12's "done when"). Read from the source (AST), so a
new raw statement anywhere else fails here and goes into fastsql as a named function with its
parity case instead."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("digitorn_site", "conversations", "apps_registry", "tooling", "approvals")

# Allowed, each for a reason:
EXEMPT = {
    "digitorn_site/fastsql.py": "the SQL module",
    "digitorn_site/sqlite_backend": "the database backend itself (its write queue classifies statements)",
    "tooling/modules/database.py": "the `database` tool: an app's own SQLite file, not the project's database",
    "digitorn_site/broker.py": "the embedded Celery broker's own SQLite file (kombu's tables), not the project's database",
    "tooling/embeddings": "training and test phrases for the tool-search model, not statements",
}

# A string that starts like a statement, or a condition with a placeholder (SQL keywords are
# upper case in this code base; prose such as "select a tool" is not flagged).
SQL_TEXT = re.compile(
    r"^\s*(SELECT\s+\S|INSERT\s+INTO\b|UPDATE\s+\S+\s+SET\b|DELETE\s+FROM\b|WITH\s+\w+\s+AS\b)"
    r"|(^|\b(WHERE|AND|OR|SET)\s+)\w+ (=|<>|>|<|IN) \(?%s"
)


def _sources() -> list[Path]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "/migrations/" in rel or any(rel == e or rel.startswith(e + "/") for e in EXEMPT):
                continue
            out.append(path)
    return out


def _strings(node: ast.AST) -> list[str]:
    """Literal text of a string constant or an f-string (its literal parts joined)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)]
    return []


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and (body := n.body) and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "cursor":
            found.append(f"{node.lineno}: opens a cursor")
        if id(node) in docstrings:
            continue
        for text in _strings(node):
            if SQL_TEXT.search(text):
                found.append(f"{node.lineno}: SQL text {text[:60]!r}")
    return found


def test_the_detector_sees_what_it_must():
    sample = ROOT / "digitorn_site" / "fastsql.py"
    assert any("opens a cursor" in o for o in _offences(sample))
    assert any("SQL text" in o for o in _offences(sample))


def test_no_cursor_or_sql_text_outside_the_sql_module():
    offences = {
        path.relative_to(ROOT).as_posix(): found for path in _sources() if (found := _offences(path))
    }
    assert offences == {}, "move these into digitorn_site/fastsql.py as named functions:\n" + "\n".join(
        f"  {p}:{o}" for p, found in offences.items() for o in found
    )
