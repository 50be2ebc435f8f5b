from django.apps import AppConfig
from django.db.models.signals import post_migrate, pre_migrate


class EvalsetsConfig(AppConfig):
    name = "evalsets"
    verbose_name = "Eval sets"

    def ready(self) -> None:
        from config import dbroles

        # The eval wall at the database: only the owner migrates, and every migrate ends with the
        # app and trainer roles' privileges brought back in line (config/dbroles.py).
        pre_migrate.connect(dbroles.refuse_migrate_unless_owner, dispatch_uid="goldset-migrate-as-owner")
        post_migrate.connect(dbroles.sync_after_migrate, sender=self, dispatch_uid="goldset-sync-roles")
