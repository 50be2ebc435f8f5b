"""Database routing for the eval wall: evalsets models never go through the trainer connection."""

from django.db import models

TRAINING_ALIAS = "training"


class EvalWallRouter:
    def db_for_read(self, model: type[models.Model], **hints) -> str | None:
        return "default"

    def db_for_write(self, model: type[models.Model], **hints) -> str | None:
        return "default"

    def allow_relation(self, obj1, obj2, **hints) -> bool | None:
        return True

    def allow_migrate(self, db: str, app_label: str, model_name=None, **hints) -> bool | None:
        # Only the app role migrates; the trainer alias is a second login to the same database.
        return db == "default"
