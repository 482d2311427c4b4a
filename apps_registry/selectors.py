"""Reads of apps, keys and secrets. Other parts look apps up here and pass CompiledApp on."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from apps_registry.manifest.compiled import CompiledApp
from apps_registry.models import ApiKey, App, AppSecret
from digitorn_site import crypto, fastsql
from digitorn_site.errors import MissingSecretError, NotFoundError

# Parsing the stored JSON on every request is wasteful; the cache is keyed by the row's
# updated_at so a redeploy, a quota change or a secret change is seen at once by every worker.
_compiled_cache: dict[str, tuple[object, CompiledApp]] = {}
# The same, keyed by updated_at as a raw cursor returns it (naive on SQLite), for app_compiled().
_head_cache: dict[str, tuple[object, CompiledApp]] = {}


def _app_head(app_id: str) -> tuple[object, int | None]:
    """(updated_at, rate_limit_rpm) of a deployed app; NOT_FOUND otherwise.

    Every message looks its app up three or four times (exists, idle timeout, rate limit, runtime).
    This single-row raw query costs ~0.1 ms where the ORM lookup of the whole row costs ~0.8 ms on
    the 2-core bench machine (query compilation, decoding the compiled manifest's JSON); the
    compiled app itself comes from the cache while updated_at is unchanged.
    """
    row = fastsql.fetchone(f"SELECT updated_at, rate_limit_rpm FROM {fastsql.table(App)} WHERE app_id = %s", [app_id])
    if row is None:
        raise NotFoundError(f"App '{app_id}' is not deployed.")
    return row[0], row[1]


def app_exists(*, app_id: str) -> None:
    """NOT_FOUND unless the app is deployed (a cheap check for request paths)."""
    _app_head(app_id)


def app_get(*, app_id: str) -> App:
    try:
        return App.objects.get(pk=app_id)
    except App.DoesNotExist:
        raise NotFoundError(f"App '{app_id}' is not deployed.") from None


def app_find(*, app_id: str) -> App | None:
    """The app, or None when it is not deployed (for answers that must not 404)."""
    return App.objects.filter(pk=app_id).first()


def app_list() -> list[App]:
    return list(App.objects.all())


def app_compiled(*, app_id: str) -> CompiledApp:
    """The stored compiled app ({{secret.X}} markers kept): for discovery and policy."""
    stamp, _ = _app_head(app_id)
    cached = _head_cache.get(app_id)
    if cached and cached[0] == stamp:
        return cached[1]
    # Read after the stamp, the row is at least as new: a redeploy in between costs one more
    # reload on the next call, never a stale answer.
    compiled = compiled_of(app_get(app_id=app_id))
    _head_cache[app_id] = (stamp, compiled)
    return compiled


def compiled_of(app: App) -> CompiledApp:
    cached = _compiled_cache.get(app.app_id)
    if cached and cached[0] == app.updated_at:
        return cached[1]
    compiled = CompiledApp.from_dict(app.compiled)
    _compiled_cache[app.app_id] = (app.updated_at, compiled)
    return compiled


def secret_values(*, app_id: str, keys: tuple[str, ...] | None = None) -> dict[str, str]:
    """Decrypted secrets of an app (store first, then environment variables of the same name)."""
    values: dict[str, str] = {}
    if keys:
        values.update({k: os.environ[k] for k in keys if k in os.environ})
    rows = AppSecret.objects.filter(app_id=app_id)
    if keys is not None:
        rows = rows.filter(key__in=keys)
    for row in rows:
        values[row.key] = crypto.decrypt(row.ciphertext)
    return values


def secret_keys(*, app_id: str) -> list[str]:
    """Names only; answers before the app is deployed too (secrets may be set first)."""
    return list(AppSecret.objects.filter(app_id=app_id).order_by("key").values_list("key", flat=True))


def secret_exists(*, app_id: str, key: str) -> bool:
    return AppSecret.objects.filter(app_id=app_id, key=key).exists()


def app_runtime(*, app_id: str) -> CompiledApp:
    """The compiled app with secrets resolved in memory: use it to run agents and tools."""
    compiled = app_compiled(app_id=app_id)
    if not compiled.secret_refs:
        return compiled
    values = secret_values(app_id=app_id, keys=compiled.secret_refs)
    missing = compiled.missing_secrets(values)
    if missing:
        key = missing[0]
        raise MissingSecretError(
            f"App '{app_id}' needs the secret '{key}', which is not set; set it with "
            f"`digitorn secret set {app_id} {key}` or PUT /api/apps/{app_id}/secrets/{key}.",
            details={"missing_secrets": missing},
        )
    return compiled.with_secrets(values)


def app_rate_limit(*, app_id: str) -> int:
    _, rpm = _app_head(app_id)
    if rpm:
        return rpm
    manifest_rpm = app_compiled(app_id=app_id).runtime.rate_limit_rpm
    return manifest_rpm or settings.DIGITORN_DEFAULT_RPM


def app_summary(app: App) -> dict:
    """The reference's AppSummary."""
    compiled = compiled_of(app)
    return {
        "app_id": app.app_id,
        "name": app.name,
        "version": app.version,
        "mode": app.mode,
        "agents": [agent.id for agent in compiled.agents],
        "modules": list(compiled.modules),
        "total_tools": app.total_tools,
        "total_categories": app.total_categories,
        "deployed_at": app.deployed_at.timestamp(),
    }


def app_detail(app: App) -> dict:
    compiled = compiled_of(app)
    caps = compiled.capabilities
    return {
        **app_summary(app),
        "description": app.description,
        "yaml_hash": app.yaml_hash,
        "source_path": app.source_path,
        "missing_secrets": list(app.missing_secrets),
        "runtime": compiled.to_dict()["runtime"],
        "policy": None
        if caps is None
        else {
            "default_policy": caps.default_policy,
            "max_risk_level": caps.max_risk_level,
            "grant": [r.module if r.actions is None else [f"{r.module}.{a}" for a in r.actions] for r in caps.grant],
            "approve": [r.module if r.actions is None else [f"{r.module}.{a}" for a in r.actions] for r in caps.approve],
            "deny": [r.module if r.actions is None else [f"{r.module}.{a}" for a in r.actions] for r in caps.deny],
        },
        "rate_limit_rpm": app_rate_limit(app_id=app.app_id),
        "updated_at": app.updated_at.timestamp(),
    }


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_lookup(*, raw_key: str) -> ApiKey | None:
    key = ApiKey.objects.filter(key_hash=hash_key(raw_key), revoked_at__isnull=True).first()
    if key is None:
        return None
    now = timezone.now()
    # One write per key per minute at most: auth runs on every request.
    if key.last_used_at is None or now - key.last_used_at > timedelta(minutes=1):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key


def api_key_list() -> list[ApiKey]:
    return list(ApiKey.objects.all())
