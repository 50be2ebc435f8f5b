from django.apps import AppConfig


class JudgingConfig(AppConfig):
    name = "evalsets.judging"
    label = "judging"  # its tables, migrations and URL namespace keep the name
    verbose_name = "Judging fine-tunes"
