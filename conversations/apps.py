from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "conversations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from conversations import receivers, tasks
        from conversations.turns import delegation, scheduler, wakeup
        from tooling import ports

        # What runs a session's queue, for the code below it (turn state, delegation, sessions)
        # that schedules one: on an event loop, else through Celery.
        wakeup.connect(advance=scheduler.advance_session, offload=tasks.advance_session_task.delay)
        ports.set_delegator(delegation)  # agent_spawn and run_parallel (tooling) reach delegation here
        receivers.connect()
