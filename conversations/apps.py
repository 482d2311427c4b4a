from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "conversations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from conversations import delegation, receivers
        from digitorn_site import signals
        from tooling import ports

        ports.set_delegator(delegation)  # agent_spawn and run_parallel (tooling) reach delegation here

        signals.approval_decided.connect(receivers.on_approval_decided, dispatch_uid="conversations.approval_decided")
        signals.background_task_finished.connect(
            receivers.on_background_task_finished, dispatch_uid="conversations.background_task_finished"
        )
        signals.app_undeployed.connect(receivers.on_app_undeployed, dispatch_uid="conversations.app_undeployed")
