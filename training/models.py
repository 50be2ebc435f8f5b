"""Frozen training data. Snapshots, their records and their contamination checks are write-once:
the database rejects UPDATE and DELETE (and TRUNCATE on PostgreSQL)."""

from django.conf import settings
from django.db import models


class TrainingSnapshot(models.Model):
    """A frozen, hashed set of approved train-split examples from one or more projects."""

    name = models.CharField(max_length=200)
    sha256 = models.CharField(max_length=64, unique=True, help_text="sha256 over the canonical records.")
    sources = models.JSONField(default=list, help_text="[{project_id, project_slug}] the records came from.")
    filters = models.JSONField(default=dict, help_text="The filters applied when the snapshot was made.")
    sft_count = models.PositiveIntegerField(default=0)
    dpo_count = models.PositiveIntegerField(default=0)
    note = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.sha256[:12]})"


class SnapshotRecord(models.Model):
    class Kind(models.TextChoices):
        SFT = "sft", "SFT (prompt → completion)"
        DPO = "dpo", "DPO (prompt, chosen, rejected)"

    snapshot = models.ForeignKey(TrainingSnapshot, on_delete=models.PROTECT, related_name="records")
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=8, choices=Kind.choices)
    messages = models.JSONField(help_text="The prompt as chat turns [{role, content}].")
    completion = models.TextField(blank=True, help_text="SFT target (gold answer or chosen response).")
    chosen = models.TextField(blank=True)
    rejected = models.TextField(blank=True)
    source_item_id = models.BigIntegerField(help_text="annotate.Item id (no foreign key: items may be archived).")
    content_hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["snapshot", "position"]
        constraints = [
            models.UniqueConstraint(fields=["snapshot", "position"], name="snapshotrecord_unique_position"),
        ]


class SnapshotCheck(models.Model):
    """One contamination verdict on a snapshot against the eval set versions that existed then.
    A snapshot may be trained on only when its latest check passed."""

    snapshot = models.ForeignKey(TrainingSnapshot, on_delete=models.PROTECT, related_name="checks")
    passed = models.BooleanField()
    evalset_versions = models.JSONField(default=list, help_text="[{id, name, sha256}] checked against.")
    threshold = models.FloatField(help_text="Share of a text's n-grams found in an eval record that blocks it.")
    report = models.JSONField(default=dict, help_text="Counts and the offending pairs, side by side.")
    checked_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-checked_at", "-id"]
        get_latest_by = ["checked_at", "id"]
