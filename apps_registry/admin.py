"""Operator admin for deployed apps, their quotas and secrets, and API keys.

Every write goes through ``apps_registry.services`` (the same code the API runs), so the admin
never bypasses validation, recompilation or signals. Secrets show their key names and whether a
value is set; neither the plaintext nor the ciphertext is ever rendered.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from apps_registry.models import ApiKey, App, AppSecret
from apps_registry.selectors import app_detail, app_rate_limit
from apps_registry.services import (
    MAX_SECRET_BYTES,
    SECRET_KEY_PATTERN,
    api_key_create,
    api_key_revoke,
    app_rate_limit_set,
    app_recompile,
    app_undeploy,
    secret_delete,
    secret_set,
)
from digitorn_site.errors import DigitornError
from digitorn_site.principals import SCOPES


def _pretty_json(value: Any) -> str:
    return format_html("<pre style='white-space:pre-wrap'>{}</pre>", json.dumps(value, indent=2, sort_keys=True))


def _report_error(modeladmin: admin.ModelAdmin, request: HttpRequest, label: str, err: DigitornError) -> None:
    modeladmin.message_user(request, f"{label}: {err.message}", level=messages.ERROR)


# --- apps -----------------------------------------------------------------------------------


class AppSecretInline(admin.TabularInline):
    """Names only: an operator sees which secrets exist, never what they are."""

    model = AppSecret
    fields = ("key", "value_set", "updated_at")
    readonly_fields = ("key", "value_set", "updated_at")
    extra = 0
    can_delete = False
    show_change_link = True

    @admin.display(description="set", boolean=True)
    def value_set(self, obj: AppSecret) -> bool:
        return bool(obj.ciphertext)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AppForm(forms.ModelForm):
    # Same bounds as app_rate_limit_set, checked here so a bad value is a form error, not a crash.
    rate_limit_rpm = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=1_000_000,
        label="Rate limit (requests per minute)",
        help_text="Empty resets to the manifest's runtime.rate_limit_rpm or the daemon default.",
    )

    class Meta:
        model = App
        fields = ("rate_limit_rpm",)


@admin.register(App)
class AppAdmin(admin.ModelAdmin):
    form = AppForm
    list_display = (
        "app_id",
        "name",
        "version",
        "mode",
        "policy",
        "total_tools",
        "total_categories",
        "rate_limit_rpm",
        "effective_rpm",
        "missing_secret_list",
        "deployed_at",
    )
    list_editable = ("rate_limit_rpm",)
    list_filter = ("mode",)
    search_fields = ("app_id", "name", "description")
    ordering = ("app_id",)
    actions = ("redeploy",)
    inlines = (AppSecretInline,)
    readonly_fields = (
        "app_id",
        "name",
        "version",
        "mode",
        "description",
        "source_path",
        "yaml_hash",
        "policy_detail",
        "agents_detail",
        "modules_detail",
        "total_tools",
        "total_categories",
        "effective_rpm",
        "missing_secret_list",
        "deployed_at",
        "updated_at",
        "raw_yaml_block",
    )
    fieldsets = (
        (None, {"fields": ("app_id", "name", "version", "mode", "description", "deployed_at", "updated_at")}),
        ("Quota", {"fields": ("rate_limit_rpm", "effective_rpm")}),
        ("Tools and policy", {"fields": ("total_tools", "total_categories", "policy_detail", "modules_detail")}),
        ("Agents", {"fields": ("agents_detail",)}),
        ("Source", {"fields": ("source_path", "yaml_hash", "missing_secret_list", "raw_yaml_block")}),
    )

    # Deploys come from YAML through the API or the CLI; the admin never fabricates an app row.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_changelist_form(self, request: HttpRequest, **kwargs: Any):
        return super().get_changelist_form(request, form=AppForm, **kwargs)

    @admin.display(description="policy")
    def policy(self, obj: App) -> str:
        caps = obj.compiled.get("capabilities")
        if caps is None:
            return "dev mode (all auto)"
        return f"default {caps.get('default_policy', 'approve')}, max risk {caps.get('max_risk_level', 'high')}"

    @admin.display(description="policy")
    def policy_detail(self, obj: App) -> str:

        policy = app_detail(obj)["policy"]
        if policy is None:
            return "No capabilities block: dev mode, every tool runs without approval."
        return _pretty_json(policy)

    @admin.display(description="agents")
    def agents_detail(self, obj: App) -> str:
        agents = [
            {
                "id": agent.get("id"),
                "name": agent.get("name"),
                "provider": (agent.get("brain") or {}).get("provider"),
                "model": (agent.get("brain") or {}).get("model"),
                "modules": agent.get("modules"),
            }
            for agent in obj.compiled.get("agents", [])
        ]
        return _pretty_json(agents)

    @admin.display(description="modules")
    def modules_detail(self, obj: App) -> str:
        return _pretty_json(obj.compiled.get("modules", {}))

    @admin.display(description="effective rpm")
    def effective_rpm(self, obj: App) -> int:

        return app_rate_limit(app_id=obj.app_id)

    @admin.display(description="missing secrets")
    def missing_secret_list(self, obj: App) -> str:
        return ", ".join(obj.missing_secrets) or "-"

    @admin.display(description="manifest (as uploaded)")
    def raw_yaml_block(self, obj: App) -> str:
        return format_html("<pre style='white-space:pre-wrap'>{}</pre>", obj.raw_yaml)

    def save_model(self, request: HttpRequest, obj: App, form: forms.ModelForm, change: bool) -> None:

        if "rate_limit_rpm" in form.changed_data:
            try:
                app_rate_limit_set(app_id=obj.app_id, rpm=form.cleaned_data["rate_limit_rpm"])
            except DigitornError as err:
                _report_error(self, request, f"Quota of '{obj.app_id}' not changed", err)

    def delete_model(self, request: HttpRequest, obj: App) -> None:

        app_undeploy(app_id=obj.app_id)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[App]) -> None:

        for app_id in list(queryset.values_list("app_id", flat=True)):
            app_undeploy(app_id=app_id)

    @admin.action(description="Redeploy (recompile from the stored YAML)")
    def redeploy(self, request: HttpRequest, queryset: QuerySet[App]) -> None:

        done = []
        for app in queryset:
            try:
                app_recompile(app_id=app.app_id)
            except DigitornError as err:
                _report_error(self, request, f"Redeploy of '{app.app_id}' failed", err)
            else:
                done.append(app.app_id)
        if done:
            self.message_user(request, f"Redeployed: {', '.join(done)}.", level=messages.SUCCESS)


# --- secrets --------------------------------------------------------------------------------


class AppSecretForm(forms.ModelForm):
    """Write-only: the value field never renders what is stored."""

    value = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        strip=False,
        help_text="Write-only. Stored encrypted; the app recompiles to use it.",
    )

    class Meta:
        model = AppSecret
        fields = ("app", "key")

    def clean_key(self) -> str:

        key = self.cleaned_data["key"]
        if not SECRET_KEY_PATTERN.match(key):
            raise forms.ValidationError(
                "Use letters, digits and underscores, starting with a letter or underscore (at most 128 characters)."
            )
        return key

    def clean_value(self) -> str:

        value = self.cleaned_data["value"]
        if len(value.encode()) > MAX_SECRET_BYTES:
            raise forms.ValidationError(f"Secrets are limited to {MAX_SECRET_BYTES} bytes.")
        return value


@admin.register(AppSecret)
class AppSecretAdmin(admin.ModelAdmin):
    form = AppSecretForm
    list_display = ("app", "key", "value_set", "updated_at")
    list_filter = ("app",)
    search_fields = ("key", "app__app_id")

    @admin.display(description="set", boolean=True)
    def value_set(self, obj: AppSecret) -> bool:
        return bool(obj.ciphertext)

    def get_fields(self, request: HttpRequest, obj: AppSecret | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("app", "key", "value")
        return ("app", "key", "value_set", "created_at", "updated_at", "value")

    def get_readonly_fields(self, request: HttpRequest, obj: AppSecret | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return ("app", "key", "value_set", "created_at", "updated_at")

    def get_form(self, request: HttpRequest, obj: AppSecret | None = None, change: bool = False, **kwargs: Any):
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is not None:
            form.base_fields["value"].label = "New value"
        return form

    def save_model(self, request: HttpRequest, obj: AppSecret, form: forms.ModelForm, change: bool) -> None:

        saved = secret_set(app_id=obj.app_id, key=obj.key, value=form.cleaned_data["value"])
        # The admin logs and redirects with this instance; point it at the row the service wrote.
        obj.pk = saved.pk
        obj.ciphertext = saved.ciphertext
        obj.created_at = saved.created_at
        obj.updated_at = saved.updated_at
        obj._state.adding = False

    def delete_model(self, request: HttpRequest, obj: AppSecret) -> None:

        secret_delete(app_id=obj.app_id, key=obj.key)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[AppSecret]) -> None:

        for app_id, key in list(queryset.values_list("app_id", "key")):
            secret_delete(app_id=app_id, key=key)


# --- API keys -------------------------------------------------------------------------------


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=[(s, s) for s in SCOPES],
        widget=forms.CheckboxSelectMultiple,
        initial=["apps:read", "apps:run"],
    )

    class Meta:
        model = ApiKey
        fields = ("name", "owner", "scopes")
        help_texts = {"owner": "Principal that owns sessions and approvals made with this key (defaults to the name)."}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if "owner" in self.fields:
            self.fields["owner"].required = False


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = ("name", "owner", "prefix", "scope_list", "created_at", "last_used_at", "revoked_at", "active")
    list_filter = ("revoked_at",)
    search_fields = ("name", "owner", "prefix")
    actions = ("revoke",)
    readonly_fields = ("name", "owner", "prefix", "scope_list", "created_at", "last_used_at", "revoked_at")

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("name", "owner", "scopes")
        return self.readonly_fields

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        return () if obj is None else self.readonly_fields

    # Keys are immutable once issued (revoke and create another), and revoked rather than
    # deleted so the audit trail (who owned what) stays.
    def has_change_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False

    @admin.display(description="scopes")
    def scope_list(self, obj: ApiKey) -> str:
        return ", ".join(obj.scopes)

    @admin.display(description="active", boolean=True)
    def active(self, obj: ApiKey) -> bool:
        return obj.revoked_at is None

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool) -> None:
        if change:
            return

        key, raw = api_key_create(
            name=form.cleaned_data["name"],
            owner=form.cleaned_data.get("owner") or None,
            scopes=list(form.cleaned_data["scopes"]),
        )
        for field in ("pk", "owner", "prefix", "key_hash", "scopes", "created_at"):
            setattr(obj, field, getattr(key, field))
        obj._state.adding = False
        # Shown once: only the hash is stored, so this message is the operator's one chance to copy it.
        self.message_user(
            request,
            f"API key created for '{key.owner}'. Copy it now, it will not be shown again: {raw}",
            level=messages.WARNING,
        )

    @admin.action(description="Revoke selected API keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:

        revoked = []
        for key in queryset:
            try:
                api_key_revoke(prefix=key.prefix)
            except DigitornError as err:
                _report_error(self, request, f"Revoking '{key.name}' failed", err)
            else:
                revoked.append(key.name)
        if revoked:
            self.message_user(request, f"Revoked: {', '.join(revoked)}.", level=messages.SUCCESS)
