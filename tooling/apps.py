from django.apps import AppConfig


def _on_approval_decided(sender, *, request_id: str, approved: bool, message: str = "", **kwargs) -> None:
    from tooling.services import direct_call_on_decision

    direct_call_on_decision(request_id=request_id, approved=approved, message=message)


class ToolingConfig(AppConfig):
    name = "tooling"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from digitorn_site import signals
        from tooling import approval_tasks  # noqa: F401 - registers the Celery task in every process

        signals.approval_decided.connect(_on_approval_decided, dispatch_uid="tooling.direct_call_on_decision")
