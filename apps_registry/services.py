"""Writes: deploy, undeploy, quotas, secrets, API keys."""

from __future__ import annotations

import json
import os
import re
import secrets as pysecrets
import stat
from dataclasses import replace
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps_registry.manifest import environment
from apps_registry.manifest.compiled import CompiledApp
from apps_registry.models import ApiKey, App, AppSecret
from apps_registry.selectors import app_get, hash_key
from digitorn_site import crypto, signals
from digitorn_site.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    ValidationError,
)
from digitorn_site.principals import SCOPES

SECRET_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_SECRET_BYTES = 64 * 1024


# --- deploy ---------------------------------------------------------------------------------


def _anchor_workspaces(compiled: CompiledApp, base_dir: Path) -> CompiledApp:
    """Relative ``workspace`` settings are relative to the manifest's folder, as users expect.

    ``runtime.workdir`` (the original's ``execution.workspace``) is the working directory of the
    modules that have a workspace setting and do not set one themselves.
    """
    from tooling import registry

    modules = {}
    workdir = compiled.runtime.workdir if compiled.runtime.workdir_mode != "none" else ""
    for module_id, config in compiled.modules.items():
        config = dict(config or {})
        if workdir and not config.get("workspace") and "{{" not in workdir:
            try:
                has_workspace = "workspace" in (registry.module_config_schema(module_id).get("properties") or {})
            except Exception:  # noqa: BLE001 - an unknown module keeps its config as written
                has_workspace = False
            if has_workspace:
                config["workspace"] = workdir
        workspace = config.get("workspace")
        if isinstance(workspace, str) and workspace and not os.path.isabs(os.path.expanduser(workspace)):
            config["workspace"] = str((base_dir / workspace).resolve())
        elif isinstance(workspace, str) and workspace:
            config["workspace"] = str(Path(os.path.expanduser(workspace)).resolve())
        modules[module_id] = config
    return replace(compiled, modules=modules)


def _available_secret_keys(app_id: str, refs: tuple[str, ...], environment_allowed: bool) -> set[str]:
    stored = set(AppSecret.objects.filter(app_id=app_id).values_list("key", flat=True))
    if not environment_allowed:
        return stored
    readable = environment.readable()
    return stored | {k for k in refs if k in readable}


MAX_ASSETS_BYTES = 5 * 1024 * 1024
MAX_BUNDLE_FILE_BYTES = 1024 * 1024


def _check_relpath(rel: object, where: str) -> str:
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise ValidationError(f"{where}: a file name must be a non-empty string.")
    parts = rel.replace("\\", "/").split("/")
    if rel.startswith(("/", "\\")) or ".." in parts or (len(rel) > 1 and rel[1] == ":"):
        raise ValidationError(f"{where}: '{rel}' must be a relative path without '..'.")
    return "/".join(p for p in parts if p not in ("", "."))


def assets_parse(raw: object) -> dict[str, str]:
    """The upload's ``assets`` field: JSON ``{relpath: content}``, at most 5 MiB, no '..'/absolute."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if isinstance(raw, str):
        if len(raw.encode()) > MAX_ASSETS_BYTES + 65536:
            raise PayloadTooLargeError(f"assets: the limit is {MAX_ASSETS_BYTES} bytes.")
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ValidationError(f"assets: must be a JSON object {{relpath: content}} ({exc}).") from None
    if not isinstance(raw, dict):
        raise ValidationError("assets: must be a JSON object {relpath: content}.")
    out: dict[str, str] = {}
    total = 0
    for rel, content in raw.items():
        key = _check_relpath(rel, "assets")
        if not isinstance(content, str):
            raise ValidationError(f"assets: the content of '{rel}' must be a string.")
        total += len(content.encode())
        if total > MAX_ASSETS_BYTES:
            raise PayloadTooLargeError(f"assets: the files add up to more than {MAX_ASSETS_BYTES} bytes.")
        out[key] = content
    return out


def secrets_parse(raw: object) -> dict[str, str]:
    """Deploy ``secrets``: a mapping {KEY: value} (a JSON string in the upload form)."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ValidationError(f"secrets: must be a JSON object {{KEY: value}} ({exc}).") from None
    if not isinstance(raw, dict):
        raise ValidationError("secrets: must be an object {KEY: value}.")
    for key, value in raw.items():
        _validate_secret_key(key)
        if not isinstance(value, str) or not value:
            raise ValidationError(f"secrets.{key}: must be a non-empty string.")
        if len(value.encode()) > MAX_SECRET_BYTES:
            raise PayloadTooLargeError(f"secrets.{key}: secrets are limited to {MAX_SECRET_BYTES} bytes.")
    return dict(raw)


def _folder_files(folder: Path):
    """Reader of the files beside a manifest deployed by path ({{prompt.X}}, {{asset.X}})."""
    root = folder.resolve()

    def read(rel: str) -> str | None:
        try:
            rel = _check_relpath(rel, "file")
        except ValidationError:
            return None
        path = (root / rel).resolve()
        if root not in path.parents or not path.is_file() or settings.DATA_DIR in path.parents:
            return None
        if path.stat().st_size > MAX_BUNDLE_FILE_BYTES:
            return None
        try:
            return path.read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    return read


@transaction.atomic
def app_deploy(
    *,
    text: str | bytes,
    source_path: str = "",
    force: bool = False,
    secrets: dict[str, str] | None = None,
    assets: dict[str, str] | None = None,
    admin: bool = True,
) -> App:
    """Compile and store an app. ``admin``: the deployer holds the ``admin`` scope; only then may the
    manifest read the daemon's environment ({{env.X}}, the {{secret.X}} fallback, providers'
    conventional key variables). ``secrets`` are applied to the compile and stored encrypted."""
    from apps_registry.manifest.compiler import compile_manifest
    from tooling.selectors import tool_index_for

    secrets = dict(secrets or {})
    if assets is not None:
        files = assets.get
    elif source_path:
        files = _folder_files(Path(source_path).parent)
    else:
        files = None
    result = compile_manifest(
        text, secrets=secrets, environ=environment.readable() if admin else {}, files=files
    ) if admin else _compile_without_environment(compile_manifest, text, secrets, files)
    compiled = replace(result.app, environment_allowed=admin)
    # Uploaded manifests have no folder of their own: their relative workspaces live in the data dir.
    base_dir = Path(source_path).parent if source_path else settings.DATA_DIR / "workspaces" / compiled.app_id
    compiled = _anchor_workspaces(compiled, base_dir)

    existing = App.objects.select_for_update().filter(pk=compiled.app_id).first()
    if existing is not None and not force:
        raise ConflictError(
            f"App '{compiled.app_id}' is already deployed; pass \"force\": true to redeploy it.",
            details={"app_id": compiled.app_id},
        )

    index = tool_index_for(compiled)
    available = _available_secret_keys(compiled.app_id, compiled.secret_refs, admin) | set(secrets)
    now = timezone.now()
    fields = {
        "name": compiled.name,
        "version": compiled.version,
        "mode": compiled.mode,
        "description": compiled.description,
        "raw_yaml": result.raw_yaml,
        "yaml_hash": result.yaml_hash,
        "source_path": source_path,
        "compiled": compiled.to_dict(),
        "missing_secrets": [k for k in compiled.secret_refs if k not in available],
        "total_tools": index.total_tools,
        "total_categories": index.total_categories,
        "deployed_at": now,
    }
    # A forced redeploy updates the row in place: secrets (FK) and sessions (by app_id) survive.
    app, _ = App.objects.update_or_create(app_id=compiled.app_id, defaults=fields)
    for key, value in secrets.items():
        AppSecret.objects.update_or_create(app=app, key=key, defaults={"ciphertext": crypto.encrypt(value)})
    transaction.on_commit(lambda: signals.app_deployed.send(sender=App, app_id=app.app_id))
    return app


def _read_manifest_file(yaml_path: str) -> tuple[bytes, str]:
    if not isinstance(yaml_path, str) or not yaml_path.strip():
        raise ValidationError("yaml_path: must be a non-empty string.")
    if "\x00" in yaml_path:
        raise ValidationError("yaml_path: must not contain NUL bytes.")
    path = Path(os.path.expanduser(yaml_path))
    if not path.is_absolute():
        raise ValidationError(f"yaml_path: must be an absolute path, got '{yaml_path}'.")
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ValidationError(f"yaml_path: must name a .yaml or .yml file, got '{path.name}'.")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise NotFoundError(f"yaml_path: no file at '{yaml_path}'.") from None
    except OSError as exc:
        raise ValidationError(f"yaml_path: cannot read '{yaml_path}': {exc.strerror}.") from None
    if stat.S_ISLNK(info.st_mode):
        raise ValidationError(f"yaml_path: '{yaml_path}' is a symbolic link; give the real file's path.")
    if stat.S_ISDIR(info.st_mode):
        raise ValidationError(f"yaml_path: '{yaml_path}' is a directory, not a YAML file.")
    if not stat.S_ISREG(info.st_mode):
        raise ValidationError(f"yaml_path: '{yaml_path}' is not a regular file.")
    resolved = path.resolve()
    if resolved == settings.DATA_DIR or settings.DATA_DIR in resolved.parents:
        raise ValidationError("yaml_path: files inside the daemon's data directory cannot be deployed.")
    limit = settings.DIGITORN_MAX_UPLOAD_BYTES
    if info.st_size > limit:
        raise PayloadTooLargeError(f"yaml_path: the file is {info.st_size} bytes; the limit is {limit} bytes.")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ValidationError(f"yaml_path: cannot open '{yaml_path}': {exc.strerror}.") from None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLargeError(f"yaml_path: the file is larger than {limit} bytes.")
    return data, str(resolved)


def _compile_without_environment(compile_manifest, text, secrets, files):
    """A deployer without the admin scope may not read the daemon's environment: a manifest that
    names {{env.X}} is refused (403) before anything is stored."""
    from apps_registry.manifest import interpolation

    result = compile_manifest(text, secrets=secrets, environ={}, files=files) if _no_env(text, interpolation) else None
    if result is None:
        names = sorted(set(interpolation.env_names(text)))
        raise ForbiddenError(
            "Only an API key with the 'admin' scope may deploy a manifest that reads the daemon's environment "
            f"({', '.join('{{env.' + n + '}}' for n in names)}); store the values as app secrets "
            "({{secret.X}}) instead.",
            details={"env": names},
        )
    return result


def _no_env(text, interpolation) -> bool:
    return not interpolation.env_names(text)


def app_deploy_path(
    *, yaml_path: str, force: bool = False, secrets: dict[str, str] | None = None, admin: bool = True
) -> App:
    data, resolved = _read_manifest_file(yaml_path)
    return app_deploy(text=data, source_path=resolved, force=force, secrets=secrets, admin=admin)


def app_undeploy(*, app_id: str) -> None:
    with transaction.atomic():
        app = app_get(app_id=app_id)
        app.delete()  # secrets go with it (FK cascade)
        transaction.on_commit(lambda: signals.app_undeployed.send(sender=App, app_id=app_id))


def app_recompile(*, app_id: str) -> App:
    """Redeploy from the stored YAML (after a secret changes, or from the admin), keeping the
    environment permission the app was deployed with."""
    app = app_get(app_id=app_id)
    admin = CompiledApp.from_dict(app.compiled).environment_allowed
    return app_deploy(text=app.raw_yaml, source_path=app.source_path, force=True, admin=admin)


@transaction.atomic
def app_rate_limit_set(*, app_id: str, rpm: int | None) -> App:
    if rpm is not None and (isinstance(rpm, bool) or not isinstance(rpm, int) or rpm < 1 or rpm > 1_000_000):
        raise ValidationError("rpm: must be an integer between 1 and 1000000.")
    app = App.objects.select_for_update().filter(pk=app_id).first()
    if app is None:
        raise NotFoundError(f"App '{app_id}' is not deployed.")
    app.rate_limit_rpm = rpm
    app.save(update_fields=["rate_limit_rpm", "updated_at"])
    return app


# --- secrets --------------------------------------------------------------------------------


def _validate_secret_key(key: str) -> None:
    if not isinstance(key, str) or not SECRET_KEY_PATTERN.match(key):
        raise ValidationError(
            f"key: '{key}' is not a valid secret name; use letters, digits and underscores, "
            "starting with a letter or underscore (at most 128 characters)."
        )


def _refresh_missing_secrets(app: App) -> None:
    compiled = CompiledApp.from_dict(app.compiled)
    available = _available_secret_keys(app.app_id, compiled.secret_refs, compiled.environment_allowed)
    app.missing_secrets = [k for k in compiled.secret_refs if k not in available]
    app.save(update_fields=["missing_secrets", "updated_at"])


@transaction.atomic
def secret_set(*, app_id: str, key: str, value: str) -> AppSecret:
    """Store (or replace) a secret; the app need not be deployed yet (set the keys, then deploy)."""
    _validate_secret_key(key)
    if not isinstance(value, str):
        raise ValidationError("value: must be a string.")
    if value == "":
        raise ValidationError("value: must not be empty; DELETE the secret to remove it.")
    if len(value.encode()) > MAX_SECRET_BYTES:
        raise PayloadTooLargeError(f"value: secrets are limited to {MAX_SECRET_BYTES} bytes.")
    app = App.objects.select_for_update().filter(pk=app_id).first()
    secret, _ = AppSecret.objects.update_or_create(
        app_id=app_id, key=key, defaults={"ciphertext": crypto.encrypt(value)}
    )
    if app is not None:
        # Bumps updated_at, so every worker's compiled-app cache picks up the new value.
        _refresh_missing_secrets(app)
    return secret


@transaction.atomic
def secret_delete(*, app_id: str, key: str) -> None:
    _validate_secret_key(key)
    app = App.objects.select_for_update().filter(pk=app_id).first()
    deleted, _ = AppSecret.objects.filter(app_id=app_id, key=key).delete()
    if not deleted:
        raise NotFoundError(f"App '{app_id}' has no secret '{key}'.")
    if app is not None:
        _refresh_missing_secrets(app)


@transaction.atomic
def secrets_rotate() -> int:
    """Re-encrypt every secret with the newest key; returns how many rows were rewritten."""
    count = 0
    for secret in AppSecret.objects.select_for_update().all():
        secret.ciphertext = crypto.rotate(secret.ciphertext)
        secret.save(update_fields=["ciphertext", "updated_at"])
        count += 1
    return count


# --- API keys -------------------------------------------------------------------------------


def api_key_create(*, name: str, owner: str | None = None, scopes: list[str] | None = None) -> tuple[ApiKey, str]:
    """Returns the row and the plaintext key, which is never stored and cannot be shown again."""
    scopes = list(scopes or ["apps:read", "apps:run"])
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValidationError(f"scopes: unknown scope(s) {unknown}; known scopes are {list(SCOPES)}.")
    if not name or len(name) > 100:
        raise ValidationError("name: must be 1 to 100 characters.")
    prefix = pysecrets.token_hex(4)
    raw = f"dg_{prefix}_{pysecrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(
        name=name, owner=(owner or name)[:100], prefix=prefix, key_hash=hash_key(raw), scopes=scopes
    )
    return key, raw


def api_key_revoke(*, prefix: str) -> ApiKey:
    key = ApiKey.objects.filter(prefix=prefix.removeprefix("dg_").split("_")[0]).first()
    if key is None:
        raise NotFoundError(f"No API key with prefix '{prefix}'.")
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key
