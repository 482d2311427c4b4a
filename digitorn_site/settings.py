"""Settings for the Digitorn daemon.

Everything comes from the environment (django-environ) with embedded defaults that need no
other server: SQLite in WAL mode under ``DIGITORN_DATA_DIR``, an in-process doorbell, and Celery on
kombu's SQLAlchemy transport over SQLite. ``DATABASE_URL`` and ``REDIS_URL`` switch to the
scale-out layout. ``.env.example`` documents every variable read here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# An explicit env file wins; a .env beside manage.py is read for local development only.
_env_file = os.environ.get("DIGITORN_ENV_FILE") or str(BASE_DIR / ".env")
if Path(_env_file).is_file():
    environ.Env.read_env(_env_file)

VERSION = "0.1.0"

DATA_DIR = Path(env.str("DIGITORN_DATA_DIR", default=str(Path.home() / ".digitorn"))).expanduser().resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)

DEBUG = env.bool("DIGITORN_DEBUG", default=False)


def _secret_key() -> str:
    """SECRET_KEY from the environment, else one generated once into the data dir (0600)."""
    if value := env.str("DJANGO_SECRET_KEY", default=""):
        return value
    path = DATA_DIR / "django-secret.key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        from django.core.management.utils import get_random_secret_key

        key = get_random_secret_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        return key
    except FileExistsError:  # pragma: no cover - two processes raced; the other one wrote it
        return path.read_text().strip()


SECRET_KEY = _secret_key()

# Loopback names only by default: a daemon that answers any Host header can be reached through
# DNS rebinding from a browser page.
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "::1", "testserver"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "digitorn_site",
    "approvals",
    "tooling",
    "apps_registry",
    "conversations",
]
# Daphne's app only swaps in its `runserver`; its import pulls Twisted (~28 MiB) into every process
# (the Celery worker and `manage.py` included). The daemon's ASGI workers start Daphne themselves.
if "runserver" in sys.argv:
    INSTALLED_APPS.insert(0, "daphne")

MIDDLEWARE = [
    "digitorn_site.api.middleware.BodySizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# The chain of /api/* under the ASGI server (digitorn_site.asgi): key-authenticated, no sessions,
# CSRF or messages, and no hop to the sync thread per middleware hook.
API_MIDDLEWARE = [
    "digitorn_site.api.middleware.BodySizeLimitMiddleware",
    "digitorn_site.api.middleware.InlineHeadersMiddleware",
]

ROOT_URLCONF = "digitorn_site.urls"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "digitorn_site.wsgi.application"
ASGI_APPLICATION = "digitorn_site.asgi.application"

# --- Database -------------------------------------------------------------------------------
SQLITE_PATH = DATA_DIR / "digitorn.sqlite3"
DATABASE_URL = env.str("DATABASE_URL", default="")
if DATABASE_URL:
    DATABASES = {"default": env.db_url_config(DATABASE_URL)}
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(SQLITE_PATH)}}

IS_SQLITE = DATABASES["default"]["ENGINE"].endswith("sqlite3")
if IS_SQLITE:
    # WAL lets readers run beside one writer; IMMEDIATE transactions take the write lock up
    # front so two workers never deadlock upgrading a read lock; the timeout makes writers
    # queue instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": env.int("DIGITORN_SQLITE_TIMEOUT", default=30),
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
        }
    )
    DATABASES["default"].setdefault("TEST", {})["NAME"] = str(DATA_DIR / "test-digitorn.sqlite3")
    # Keep each thread's connection: ASGI runs requests on a fixed set of threads (the sync thread
    # and the executor's), so connections stay bounded, and reopening one per request (connect and
    # the PRAGMAs above) cost more than the request's own queries.
    DATABASES["default"]["CONN_MAX_AGE"] = None
    # Django's SQLite backend plus a write queue (threading lock + flock): writers wait their turn
    # and wake at once instead of sleeping in SQLite's busy handler (see sqlite_backend/base.py).
    if env.bool("DIGITORN_SQLITE_WRITE_QUEUE", default=True):
        DATABASES["default"]["ENGINE"] = "digitorn_site.sqlite_backend"
else:
    # Under ASGI each request may run on another thread: persistent connections would leak.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # With CONN_MAX_AGE=0 every request and engine step would open a new PostgreSQL connection
    # (a fork on the server, several ms); Django's pool (psycopg-pool) hands a closed connection
    # back to the pool instead. On by default for PostgreSQL; DIGITORN_DB_POOL=0 turns it off.
    # max_size bounds one process: keep (ASGI workers + Celery processes) x max_size under the
    # server's max_connections (100 by default).
    if DATABASES["default"]["ENGINE"].endswith("postgresql") and env.bool("DIGITORN_DB_POOL", default=True):
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": env.int("DIGITORN_DB_POOL_MIN", default=2),
            "max_size": env.int("DIGITORN_DB_POOL_MAX", default=12),
            "timeout": env.float("DIGITORN_DB_POOL_TIMEOUT", default=30.0),
        }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis / channel layer / Celery ---------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {}

CELERY_BROKER_URL = env.str(
    "CELERY_BROKER_URL",
    default=REDIS_URL or f"sqla+sqlite:///{DATA_DIR / 'celery-broker.sqlite3'}",
)
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"

# --- API ------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "DEFAULT_AUTHENTICATION_CLASSES": ["digitorn_site.api.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["digitorn_site.api.auth.HasScope"],
    "EXCEPTION_HANDLER": "digitorn_site.api.exceptions.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "digitorn_site.api.openapi.ViewAttributeSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Digitorn API",
    "DESCRIPTION": (
        "Every response is wrapped in the envelope "
        '`{"success": bool, "data": ..., "error": str|null}`; failures add `error_code` and '
        "`details`. Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>`."
    ),
    "VERSION": VERSION,
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
    },
    "SECURITY": [{"bearer": []}, {"apiKey": []}],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "digitorn_site.api.schema.wrap_in_envelope",
    ],
}

# Request bodies: JSON bodies and YAML uploads are small; anything bigger is refused with 413
# before it is read.
DIGITORN_MAX_BODY_BYTES = env.int("DIGITORN_MAX_BODY_BYTES", default=1024 * 1024)
DIGITORN_MAX_UPLOAD_BYTES = env.int("DIGITORN_MAX_UPLOAD_BYTES", default=1024 * 1024)
# Message-taking endpoints (/chat, /chat/stream, /run, /messages): a message may be 1 MiB of UTF-8
# (JSON-escaped it can take more) and carry up to 10 images; the middleware holds other paths to the
# smaller limit above before anything reads the body, so Django's own cap is the larger one.
DIGITORN_MAX_MESSAGE_BODY_BYTES = env.int("DIGITORN_MAX_MESSAGE_BODY_BYTES", default=16 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = max(DIGITORN_MAX_BODY_BYTES, DIGITORN_MAX_MESSAGE_BODY_BYTES)
FILE_UPLOAD_MAX_MEMORY_SIZE = DIGITORN_MAX_UPLOAD_BYTES

# Bootstrap admin key: from the environment, else generated by `digitorn start` into this file.
DIGITORN_API_KEY = env.str("DIGITORN_API_KEY", default="")
ADMIN_KEY_FILE = DATA_DIR / "admin.key"

# Secrets encryption (MultiFernet, newest first); generated into the data dir when unset.
DIGITORN_ENCRYPTION_KEYS = env.list("DIGITORN_ENCRYPTION_KEYS", default=[])
ENCRYPTION_KEY_FILE = DATA_DIR / "encryption.keys"

# Conversations
DIGITORN_SESSION_IDLE_SECONDS = env.int("DIGITORN_SESSION_IDLE_SECONDS", default=3600)
DIGITORN_DEFAULT_RPM = env.int("DIGITORN_DEFAULT_RPM", default=60)
DIGITORN_QUEUE_DEPTH = env.int("DIGITORN_QUEUE_DEPTH", default=20)
DIGITORN_SSE_PING_SECONDS = env.float("DIGITORN_SSE_PING_SECONDS", default=15.0)
DIGITORN_SSE_POLL_SECONDS = env.float("DIGITORN_SSE_POLL_SECONDS", default=0.05)
DIGITORN_LEASE_SECONDS = env.int("DIGITORN_LEASE_SECONDS", default=60)
# Retention (issue 14): expired sessions are deleted on schedule; events, and the tool-audit rows of
# sessions that are gone, are kept this many days (0: forever); the sweep runs every N seconds.
DIGITORN_RETENTION_DAYS = env.float("DIGITORN_RETENTION_DAYS", default=30.0)  # fractions allowed
DIGITORN_RETENTION_SWEEP_SECONDS = env.float("DIGITORN_RETENTION_SWEEP_SECONDS", default=3600.0)

# Background tasks
DIGITORN_TASK_LEASE_SECONDS = env.float("DIGITORN_TASK_LEASE_SECONDS", default=30.0)
DIGITORN_TASK_REQUEUE_SECONDS = env.float("DIGITORN_TASK_REQUEUE_SECONDS", default=60.0)
DIGITORN_TASK_WAIT_MAX_SECONDS = env.float("DIGITORN_TASK_WAIT_MAX_SECONDS", default=300.0)

# Daemon
DIGITORN_PID_FILE = DATA_DIR / "daemon.json"

# --- i18n / static --------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # Every record passes the redaction filter: a URL with ?token= must not write the key to the log.
    "filters": {"redact": {"()": "digitorn_site.logredact.RedactFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]}},
    "root": {"handlers": ["console"], "level": env.str("DIGITORN_LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "daphne": {"level": "WARNING"},
    },
}
