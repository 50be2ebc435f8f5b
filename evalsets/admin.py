"""Read-only admin: frozen versions and records can be looked at, never edited (the database
rejects it anyway)."""

from django.contrib import admin

from config.admin import ReadOnlyAdmin
from evalsets.models import EvalRecord, EvalSetVersion


@admin.register(EvalSetVersion)
class EvalSetVersionAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "record_count", "sha256", "frozen_by", "frozen_at"]
    list_filter = ["project"]


@admin.register(EvalRecord)
class EvalRecordAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "kind", "provenance", "agreement", "adjudicated"]
    list_filter = ["kind", "version"]
    search_fields = ["prompt"]
