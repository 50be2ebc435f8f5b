"""Database routing for the eval wall: evalsets models never go through the trainer connection.

A process started with ``GOLDSET_DB_ALIAS=training`` (the gpu worker) routes the training app's
models to the "training" alias, which logs in as the trainer role; everything else stays on
"default". In such a process evalsets models are refused outright: the gpu worker has no business
with eval data. An explicit ``.using("training")`` on an evalsets model is refused by its manager
(``evalsets.models.EvalWallQuerySet``), which calls ``refuse_training_alias``.
"""

from django.conf import settings
from django.db import models

TRAINING_ALIAS = "training"
EVAL_WALL_APPS = frozenset({"evalsets"})
TRAINER_APPS = frozenset({"training", "judging"})


class EvalWallError(RuntimeError):
    """An eval set model was asked for through the trainer's connection."""

    def __init__(self, detail: str):
        super().__init__(
            f"The eval wall: {detail} Eval data is never read or written as the trainer role; "
            "use the 'default' connection from the web side or a default-queue worker."
        )


def refuse_training_alias(alias: str, model: type[models.Model]) -> None:
    if alias == TRAINING_ALIAS and model._meta.app_label in EVAL_WALL_APPS:
        raise EvalWallError(f"{model._meta.label} cannot be queried through the {TRAINING_ALIAS!r} alias.")


def process_alias() -> str:
    """The alias this process was started for: "training" in the gpu worker, "default" elsewhere."""
    return getattr(settings, "GOLDSET_DB_ALIAS", "default")


class EvalWallRouter:
    def _route(self, model: type[models.Model], hints: dict) -> str:
        label = model._meta.app_label
        alias = process_alias()
        if label in EVAL_WALL_APPS:
            instance = hints.get("instance")
            if alias == TRAINING_ALIAS:
                raise EvalWallError(f"{model._meta.label} is not available in a process that runs as the trainer.")
            if instance is not None and instance._state.db == TRAINING_ALIAS:
                raise EvalWallError(f"{model._meta.label} was loaded through the {TRAINING_ALIAS!r} alias.")
            return "default"
        if label in TRAINER_APPS and alias == TRAINING_ALIAS:
            return TRAINING_ALIAS
        return "default"

    def db_for_read(self, model: type[models.Model], **hints) -> str | None:
        return self._route(model, hints)

    def db_for_write(self, model: type[models.Model], **hints) -> str | None:
        return self._route(model, hints)

    def allow_relation(self, obj1, obj2, **hints) -> bool | None:
        dbs = {obj1._state.db, obj2._state.db}
        labels = {obj1._meta.app_label, obj2._meta.app_label}
        return not (TRAINING_ALIAS in dbs and labels & EVAL_WALL_APPS)

    def allow_migrate(self, db: str, app_label: str, model_name=None, **hints) -> bool | None:
        # The trainer never migrates. On PostgreSQL only the owner role may (config.dbroles refuses
        # any other login before the first statement): `manage.py migrate --database owner`.
        return db != TRAINING_ALIAS
