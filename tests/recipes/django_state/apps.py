from django.apps import AppConfig


class DjangoStateConfig(AppConfig):
    name = "django_state"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from . import state

        state.connect_signals()
