"""A module imported on first attribute access.

Every process of the daemon imports the tool registry, but few ever search it; numpy and the
embedding model (~35 MiB together) are loaded by the first search instead of at start. Only the
import line of a heavy dependency changes: ``np = lazy_module("numpy")`` then ``np.zeros(...)``
as before (annotations are strings under ``from __future__ import annotations``).
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any

_lock = threading.Lock()


class LazyModule(ModuleType):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_lazy_target"] = name

    def __getattr__(self, attr: str) -> Any:
        # Called only for attributes not yet copied here: after the first access of a name the
        # lookup is a plain instance-dict hit.
        with _lock:
            module = importlib.import_module(self.__dict__["_lazy_target"])
        value = getattr(module, attr)
        self.__dict__[attr] = value
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self.__dict__['_lazy_target']!r}>"


def lazy_module(name: str) -> Any:
    """The real module when it is imported already, else a stand-in that imports it when used."""
    import sys

    return sys.modules.get(name) or LazyModule(name)


# DRF's compat module imports optional packages it finds installed: ``requests`` (for its test
# client), ``pygments`` (the browsable API's highlighting) and ``django.contrib.postgres.fields``
# (which loads psycopg, ~14 MiB, even on SQLite). The daemon uses none of them through DRF (JSON
# renderer only, no ArrayField), and every process paid ~25 MiB for them (issue 14).
_DRF_OPTIONAL = ("requests", "pygments", "markdown")


def import_drf_lean() -> None:
    """Import ``rest_framework.compat`` with its optional extras hidden, then unhide them.

    Call before anything imports DRF's serializers or views. The packages stay importable for
    everyone else (tests use ``requests`` through schemathesis); only DRF's compat sees them
    missing. On PostgreSQL psycopg is loaded anyway, so its postgres fields stay available.
    """
    import sys

    from django.conf import settings

    if "rest_framework.compat" in sys.modules:
        return
    hidden = [name for name in _DRF_OPTIONAL if name not in sys.modules]
    if settings.IS_SQLITE and "psycopg" not in sys.modules:
        hidden.append("django.contrib.postgres.fields")
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment] - an import of it raises ImportError
    try:
        import rest_framework.compat  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
