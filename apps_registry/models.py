from __future__ import annotations

from django.db import models


class App(models.Model):
    """A deployed app: its manifest as uploaded, and the compiled form every part runs on."""

    app_id = models.CharField(primary_key=True, max_length=128)
    name = models.CharField(max_length=200)
    version = models.CharField(max_length=50)
    mode = models.CharField(max_length=20)
    description = models.TextField(blank=True, default="")
    raw_yaml = models.TextField()
    yaml_hash = models.CharField(max_length=64)
    source_path = models.CharField(max_length=4096, blank=True, default="")
    # CompiledApp.to_dict(): {{secret.X}} markers, never plaintext.
    compiled = models.JSONField()
    missing_secrets = models.JSONField(default=list, blank=True)
    total_tools = models.PositiveIntegerField(default=0)
    total_categories = models.PositiveIntegerField(default=0)
    # Quota set through PUT /quota; null means the manifest's or the daemon's default.
    rate_limit_rpm = models.PositiveIntegerField(null=True, blank=True)
    deployed_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["app_id"]

    def __str__(self) -> str:
        return self.app_id


class ApiKey(models.Model):
    """An API key, stored as a SHA-256 hash; the plaintext is shown once at creation."""

    name = models.CharField(max_length=100)
    owner = models.CharField(max_length=100, help_text="Principal that owns sessions and approvals made with this key.")
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class AppSecret(models.Model):
    """One per-app secret, Fernet-encrypted (MultiFernet, newest key first)."""

    # No database constraint: a secret may be set before its app is deployed (the original's order:
    # set the keys, then deploy). Undeploying still deletes the app's secrets (ORM cascade).
    app = models.ForeignKey(App, on_delete=models.CASCADE, related_name="secrets", db_constraint=False)
    key = models.CharField(max_length=128)
    ciphertext = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["app_id", "key"]
        constraints = [models.UniqueConstraint(fields=["app", "key"], name="uniq_app_secret_key")]

    def __str__(self) -> str:
        return f"{self.app_id}:{self.key}"
