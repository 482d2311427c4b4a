"""Which environment variables a manifest may read (``{{env.X}}``, the ``{{secret.X}}`` fallback, a
provider's conventional key variable).

The daemon's own credentials are never readable: every ``DIGITORN_*`` variable (the admin key, the
encryption keys, ...), ``DJANGO_SECRET_KEY``, ``DATABASE_URL``, ``REDIS_URL`` and the Celery URLs.
Among the others, the operator chooses with ``DIGITORN_MANIFEST_ENV``: a comma- or space-separated
list of names or shell globs (``OPENAI_API_KEY, *_API_KEY, PWD``); unset means every variable but
the daemon's own. Whether a given deploy may read the environment at all is decided by the deploy
service (only keys with the ``admin`` scope may).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping

DAEMON_ONLY = ("DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
DAEMON_PREFIXES = ("DIGITORN_",)
SETTING = "DIGITORN_MANIFEST_ENV"


def _patterns(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get(SETTING)
    if raw is None or not raw.strip():
        return ["*"]
    return [p for p in raw.replace(",", " ").split() if p]


def refusal(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """None when ``name`` may be read; otherwise why not (for the error message)."""
    environ = os.environ if environ is None else environ
    if name in DAEMON_ONLY or name.startswith(DAEMON_PREFIXES):
        return f"{name} is one of the daemon's own credentials and is never readable from a manifest"
    patterns = _patterns(environ)
    if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
        return f"{name} is not in the operator's list of readable variables ({SETTING})"
    return None


def readable(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a manifest may read, from ``environ`` (the process environment by default)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if refusal(k, environ) is None}
