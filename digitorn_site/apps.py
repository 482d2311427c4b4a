from django.apps import AppConfig


class DigitornSiteConfig(AppConfig):
    name = "digitorn_site"
    verbose_name = "Digitorn"

    def ready(self) -> None:
        from digitorn_site.lazy import import_drf_lean

        import_drf_lean()  # first: before any DRF serializer is imported (see there)
        # Importing the Celery app here binds every task to it in web processes too, so
        # publishing from a view uses the configured broker and not Celery's amqp default.
        from digitorn_site import celery, health_checks

        if celery.workers_health not in health_checks._checks:
            health_checks.register(celery.workers_health)
