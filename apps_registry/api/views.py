from __future__ import annotations

from django.conf import settings

from apps_registry import selectors, services
from apps_registry.api.serializers import DeploySerializer, SecretValueSerializer, UploadSerializer
from digitorn_site.api.base import ApiView
from digitorn_site.api.envelope import ok
from digitorn_site.errors import PayloadTooLargeError, UnsupportedMediaTypeError, ValidationError
from digitorn_site.principals import is_admin


class AppListView(ApiView):
    required_scope = "apps:read"

    def get(self, request):
        return ok([selectors.app_summary(app) for app in selectors.app_list()])


class DeployView(ApiView):
    required_scope = "apps:deploy"
    request_serializer = DeploySerializer

    def post(self, request):
        body = self.parse(DeploySerializer)
        app = services.app_deploy_path(
            yaml_path=body["yaml_path"],
            force=body["force"],
            secrets=services.secrets_parse(body.get("secrets")),
            admin=is_admin(self.principal),
        )
        return ok(selectors.app_summary(app))


class DeployUploadView(ApiView):
    required_scope = "apps:deploy"
    request_serializer = UploadSerializer

    def post(self, request):
        # DRF's request.content_type keeps the boundary parameter; compare the media type only.
        if request.content_type.split(";")[0].strip() != "multipart/form-data":
            raise UnsupportedMediaTypeError(
                "Send the manifest as multipart/form-data with the YAML in a 'file' field "
                "(curl -F file=@app.yaml)."
            )
        upload = request.FILES.get("file")
        if upload is None:
            raise ValidationError("file: a YAML file is required in the 'file' form field.")
        limit = settings.DIGITORN_MAX_UPLOAD_BYTES
        if upload.size > limit:
            raise PayloadTooLargeError(f"file: the upload is {upload.size} bytes; the limit is {limit} bytes.")
        body = self.parse(
            UploadSerializer,
            {
                "file": upload,
                "force": request.data.get("force", False),
                "secrets": _form_text(request, "secrets"),
                "assets": _form_text(request, "assets"),
            },
        )
        app = services.app_deploy(
            text=body["file"].read(),
            force=body["force"],
            secrets=services.secrets_parse(body["secrets"]),
            assets=services.assets_parse(body["assets"]) if body["assets"] else None,
            admin=is_admin(self.principal),
        )
        return ok(selectors.app_summary(app))


def _form_text(request, name: str) -> str:
    """A text form field, or an uploaded file part of that name (``-F assets=@assets.json``)."""
    part = request.FILES.get(name)
    if part is not None:
        limit = services.MAX_ASSETS_BYTES + 65536
        if part.size > limit:
            raise PayloadTooLargeError(f"{name}: the part is {part.size} bytes; the limit is {limit} bytes.")
        return part.read().decode("utf-8", "replace")
    value = request.data.get(name, "")
    return value if isinstance(value, str) else ""


class AppDetailView(ApiView):
    required_scope = {"GET": "apps:read", "DELETE": "apps:deploy"}

    def get(self, request, app_id: str):
        return ok(selectors.app_detail(selectors.app_get(app_id=app_id)))

    def delete(self, request, app_id: str):
        services.app_undeploy(app_id=app_id)
        return ok(
            {
                "app_id": app_id,
                "undeployed": True,
                "deleted": True,
                "message": f"App '{app_id}' undeployed: its sessions and secrets were deleted, its running "
                "background tasks and pending approvals cancelled.",
            }
        )


class DeployStatusView(ApiView):
    """Deploys are synchronous here (POST /deploy answers once the app is live or refused), so the
    status is final at once: ``deployed`` or ``not_deployed``; never 404, clients poll it."""

    required_scope = "apps:read"

    def get(self, request, app_id: str):
        app = selectors.app_find(app_id=app_id)
        return ok(
            {
                "app_id": app_id,
                "status": "deployed" if app is not None else "not_deployed",
                "deployed": app is not None,
                "version": app.version if app is not None else None,
                "deployed_at": app.deployed_at.timestamp() if app is not None else None,
                "error": None,
            }
        )


class SecretListView(ApiView):
    required_scope = "apps:read"

    def get(self, request, app_id: str):
        return ok({"app_id": app_id, "keys": selectors.secret_keys(app_id=app_id)})


class SecretDetailView(ApiView):
    required_scope = {"GET": "apps:read", "PUT": "secrets:write", "DELETE": "secrets:write"}
    request_serializer = SecretValueSerializer

    def get(self, request, app_id: str, key: str):
        return ok({"app_id": app_id, "key": key, "exists": selectors.secret_exists(app_id=app_id, key=key)})

    def put(self, request, app_id: str, key: str):
        body = self.parse(SecretValueSerializer)
        services.secret_set(app_id=app_id, key=key, value=body["value"])
        app = selectors.app_find(app_id=app_id)
        # A deployed app picks the new value up at once (its compiled form is re-read on the next use).
        return ok(
            {
                "app_id": app_id,
                "key": key,
                "status": "set",
                "reloaded": app is not None,
                "reload_error": None,
                "exists": True,
                "missing_secrets": list(app.missing_secrets) if app is not None else None,
            }
        )

    def delete(self, request, app_id: str, key: str):
        services.secret_delete(app_id=app_id, key=key)
        return ok({"app_id": app_id, "key": key, "status": "deleted", "exists": False})
