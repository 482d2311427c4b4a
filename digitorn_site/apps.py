from django.apps import AppConfig


class DigitornSiteConfig(AppConfig):
    name = "digitorn_site"
    verbose_name = "Digitorn"
