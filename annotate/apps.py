from django.apps import AppConfig


class AnnotateConfig(AppConfig):
    name = "annotate"
    verbose_name = "Annotation"

    def ready(self) -> None:
        # Registers the SQLite half of the write-once triggers on every new connection.
        import config.writeonce  # noqa: F401
