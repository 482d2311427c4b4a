from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from approvals import receivers
        from digitorn_site import signals

        signals.app_undeployed.connect(receivers.on_app_undeployed, dispatch_uid="approvals.cancel_on_undeploy")
