from django.apps import AppConfig


class ToolingConfig(AppConfig):
    name = "tooling"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from digitorn_site import signals

        # approval_tasks: imported so every process (web and worker) registers the Celery task.
        from tooling import approval_tasks, receivers  # noqa: F401

        decided, undeployed = signals.approval_decided, signals.app_undeployed
        decided.connect(receivers.on_approval_decided_direct_call, dispatch_uid="tooling.direct_call_on_decision")
        decided.connect(
            receivers.on_approval_decided_background_task, dispatch_uid="tooling.background.approval_decided"
        )
        undeployed.connect(
            receivers.on_app_undeployed_background_tasks, dispatch_uid="tooling.background.app_undeployed"
        )
        undeployed.connect(receivers.on_app_undeployed_mcp, dispatch_uid="tooling.modules.mcp.app_undeployed")
