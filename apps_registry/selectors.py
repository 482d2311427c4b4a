"""Reads of apps, keys and secrets. Other parts look apps up here and pass CompiledApp on."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from apps_registry.manifest import environment
from apps_registry.manifest.compiled import CompiledApp
from apps_registry.manifest.providers import conventional_key_allowed, provider_named
from apps_registry.models import ApiKey, App, AppSecret
from digitorn_site import crypto, fastsql
from digitorn_site.errors import MissingSecretError, NotFoundError, ValidationError

# Parsing the stored JSON on every request is wasteful; the cache is keyed by the row's
# updated_at so a redeploy, a quota change or a secret change is seen at once by every worker.
_compiled_cache: dict[str, tuple[object, CompiledApp]] = {}
# The same, keyed by the updated_at of _app_head (the one-column read), for app_compiled().
_head_cache: dict[str, tuple[object, CompiledApp]] = {}


def _app_head(app_id: str) -> tuple[object, int | None]:
    """(updated_at, rate_limit_rpm) of a deployed app; NOT_FOUND otherwise.

    Every message looks its app up three or four times (exists, idle timeout, rate limit, runtime).
    This single-row raw query costs ~0.1 ms where the ORM lookup of the whole row costs ~0.8 ms on
    the 2-core bench machine (query compilation, decoding the compiled manifest's JSON); the
    compiled app itself comes from the cache while updated_at is unchanged.
    """
    head = fastsql.app_head(app_id)
    if head is None:
        raise NotFoundError(f"App '{app_id}' is not deployed.")
    return head


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
    return _compiled_at(app_id, stamp)


def app_with_limit(*, app_id: str) -> tuple[CompiledApp, int]:
    """The compiled app and its requests-per-minute limit (as app_rate_limit), NOT_FOUND unless
    deployed: one read of the app's head for a message's whole request path, where app_exists,
    app_rate_limit and app_compiled read it once each."""
    stamp, rpm = _app_head(app_id)
    compiled = _compiled_at(app_id, stamp)
    return compiled, rpm or compiled.runtime.rate_limit_rpm or settings.DIGITORN_DEFAULT_RPM


def _compiled_at(app_id: str, stamp: object) -> CompiledApp:
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


def secret_values(
    *, app_id: str, keys: tuple[str, ...] | None = None, environment_allowed: bool = False
) -> dict[str, str]:
    """Decrypted secrets of an app (store first, then -- only for an app deployed by an admin key --
    a readable environment variable of the same name: never the daemon's own credentials)."""
    values: dict[str, str] = {}
    if keys and environment_allowed:
        readable = environment.readable()
        values.update({k: readable[k] for k in keys if k in readable})
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
    if compiled.mode in ("background", "pipeline"):
        raise ValidationError(
            f"App '{app_id}' runs in '{compiled.mode}' mode, which this daemon does not run yet; "
            "deploy it with runtime.mode: conversation or one_shot."
        )
    env = environment.readable() if compiled.environment_allowed else {}
    if not compiled.secret_refs and not compiled.env_refs and not _needs_conventional_key(compiled):
        return compiled
    values = secret_values(
        app_id=app_id, keys=compiled.secret_refs, environment_allowed=compiled.environment_allowed
    ) if compiled.secret_refs else {}
    missing = compiled.missing_secrets(values)
    if missing:
        key = missing[0]
        raise MissingSecretError(
            f"App '{app_id}' needs the secret '{key}', which is not set; set it with "
            f"`digitorn secret set {app_id} {key}` or PUT /api/apps/{app_id}/secrets/{key}.",
            details={"missing_secrets": missing},
        )
    return _conventional_keys(compiled.with_secrets(values, env), env)


def _needs_conventional_key(compiled: CompiledApp) -> bool:
    """Cheap test first: most apps (scripted brains, explicit keys) skip the rewrite on the hot path."""
    if not compiled.environment_allowed:
        return False
    for agent in compiled.agents:
        brain = agent.brain
        while brain is not None:
            spec = provider_named(brain.provider or "")
            if spec is not None and spec.env_key and not (brain.config or {}).get("api_key"):
                return True
            brain = brain.fallback_spec()
    return False


def _conventional_keys(compiled: CompiledApp, env: dict[str, str]) -> CompiledApp:
    """A brain with no api_key takes its provider's conventional variable (OPENAI_API_KEY, ...) only
    under ``providers.conventional_key_allowed``: app deployed by an admin key, and the provider's own
    default base URL (a deployer's base_url must not receive the daemon's key)."""
    if not compiled.environment_allowed:
        return compiled
    extra: list[str] = []

    def fill(brain: dict) -> dict:
        config = dict(brain.get("config") or {})
        spec = provider_named(brain.get("provider") or "")
        if not config.get("api_key") and spec is not None and conventional_key_allowed(
            environment_allowed=True, provider=spec.name, base_url=str(config.get("base_url") or "")
        ) and env.get(spec.env_key):
            config["api_key"] = env[spec.env_key]
            extra.append(env[spec.env_key])
        out = {**brain, "config": config}
        if brain.get("fallback"):
            out["fallback"] = fill(brain["fallback"])
        return out

    data = compiled.to_dict()
    data["agents"] = [{**a, "brain": fill(a["brain"])} for a in data["agents"]]
    if not extra:
        return compiled
    return replace(CompiledApp.from_dict(data), secret_values=tuple([*compiled.secret_values, *extra]))


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
        "workspace_mode": compiled.runtime.workdir_mode,
        "greeting": compiled.ui.get("greeting") or "",
        "warnings": list(compiled.warnings),
    }


def app_detail(app: App) -> dict:
    compiled = compiled_of(app)
    caps = compiled.capabilities
    return {
        **app_summary(app),
        "description": app.description,
        **{k: v for k, v in compiled.app_meta.items()},
        "quick_prompts": compiled.app_meta.get("quick_prompts") or compiled.ui.get("quick_prompts") or [],
        "theme": compiled.ui.get("theme") or {},
        "features": compiled.ui.get("features") or {},
        "agents_detail": [
            {"id": a.id, "name": a.name, "role": a.role, "specialty": a.specialty, "provider": a.brain.provider,
             "model": a.brain.model}
            for a in compiled.agents
        ],
        "entry_agent": compiled.agent().id if compiled.agents else "",
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
