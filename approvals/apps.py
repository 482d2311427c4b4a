from django.apps import AppConfig


def _on_app_undeployed(sender, *, app_id: str, **kwargs) -> None:
    from approvals.services import approvals_cancel

    approvals_cancel(app_id=app_id)


class ApprovalsConfig(AppConfig):
    name = "approvals"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from digitorn_site import signals

        signals.app_undeployed.connect(_on_app_undeployed, dispatch_uid="approvals.cancel_on_undeploy")
