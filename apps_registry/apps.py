from django.apps import AppConfig


class AppsRegistryConfig(AppConfig):
    name = "apps_registry"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from apps_registry.selectors import app_runtime
        from tooling import ports

        # tooling (a layer below) looks a deployed app up by id through this port.
        ports.set_app_resolver(app_runtime)
