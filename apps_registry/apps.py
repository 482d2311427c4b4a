from django.apps import AppConfig


class AppsRegistryConfig(AppConfig):
    name = "apps_registry"
    default_auto_field = "django.db.models.BigAutoField"
