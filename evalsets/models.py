"""Frozen eval set versions and their records: write-once tables that the trainer role cannot read.

The database rejects UPDATE and DELETE on both tables (and TRUNCATE on PostgreSQL); a correction is a
new version. The managers below also refuse the "training" connection, so a query that names it
fails before it reaches the database (where the trainer role would be denied anyway).
"""

from django.conf import settings
from django.db import models
from django.urls import reverse

from config.background import BackgroundWork
from config.routers import TRAINING_ALIAS, EvalWallError, refuse_training_alias


class EvalWallQuerySet(models.QuerySet):
    @property
    def db(self) -> str:
        alias = super().db
        refuse_training_alias(alias, self.model)
        return alias


class EvalWallManager(models.Manager.from_queryset(EvalWallQuerySet)):
    pass


class EvalWallModel(models.Model):
    objects = EvalWallManager()

    class Meta:
        abstract = True

    def save(self, *args, using: str | None = None, **kwargs) -> None:
        if using == TRAINING_ALIAS:
            raise EvalWallError(f"{self._meta.label} cannot be written through the {TRAINING_ALIAS!r} alias.")
        super().save(*args, using=using, **kwargs)


class EvalSetVersion(EvalWallModel):
    """One frozen version of a project's eval set, hashed over its canonical JSONL."""

    project = models.ForeignKey("annotate.Project", on_delete=models.PROTECT, related_name="evalset_versions")
    number = models.PositiveIntegerField()
    previous = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    sha256 = models.CharField(max_length=64, help_text="sha256 of the canonical JSONL (the goldset export).")
    record_count = models.PositiveIntegerField()
    counts = models.JSONField(default=dict, blank=True, help_text="Records by task kind.")
    provenance_mix = models.JSONField(default=dict, blank=True, help_text="Records by item provenance.")
    agreement = models.JSONField(
        default=dict, blank=True, help_text="{mean, min, adjudicated, histogram} over the records."
    )
    rubric_versions = models.JSONField(default=list, blank=True, help_text="[{id, label}] of the rubric versions used.")
    refusals = models.JSONField(default=list, blank=True, help_text="[{item_id, reason}] eval items left out, and why.")
    changelog = models.TextField(help_text="What changed since the previous version, and why.")
    frozen_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    frozen_at = models.DateTimeField()

    objects = EvalWallManager()

    class Meta:
        ordering = ["project", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="evalsetversion_unique_number"),
            models.CheckConstraint(condition=models.Q(number__gte=1), name="evalsetversion_number_positive"),
            models.CheckConstraint(condition=models.Q(record_count__gte=1), name="evalsetversion_not_empty"),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("evalsets:version-detail", kwargs={"version_id": self.pk})

    @property
    def name(self) -> str:
        return f"{self.project.slug}-eval-v{self.number}"


class EvalRecord(EvalWallModel):
    """One frozen example: the prompt and what humans agreed it should get."""

    version = models.ForeignKey(EvalSetVersion, on_delete=models.PROTECT, related_name="records")
    position = models.PositiveIntegerField()
    item_id = models.BigIntegerField(help_text="annotate.Item id it was frozen from.")
    kind = models.CharField(max_length=16)
    prompt = models.TextField()
    messages = models.JSONField(null=True, blank=True, help_text="Chat turns [{role, content}], if any.")
    reference = models.TextField(blank=True, help_text="The gold answer (gold items).")
    response = models.TextField(blank=True, help_text="The response the rubric scores are about (rubric items).")
    chosen = models.TextField(blank=True)
    rejected = models.TextField(blank=True)
    rubric_scores = models.JSONField(null=True, blank=True, help_text="{criterion_key: value} (rubric items).")
    rubric_version_id = models.BigIntegerField(null=True, blank=True)
    reviewer_ids = models.JSONField(default=list, blank=True)
    agreement = models.FloatField(null=True, blank=True)
    agreeing_reviews = models.PositiveSmallIntegerField(help_text="Human reviews that agree with the record.")
    adjudicated = models.BooleanField(default=False)
    provenance = models.CharField(max_length=32)
    content_hash = models.CharField(max_length=64, help_text="sha256 of this record's canonical line.")

    objects = EvalWallManager()

    class Meta:
        ordering = ["version", "position"]
        constraints = [
            models.UniqueConstraint(fields=["version", "position"], name="evalrecord_unique_position"),
            models.UniqueConstraint(fields=["version", "item_id"], name="evalrecord_unique_item"),
            # Only humans make eval data, enforced here too: no LLM-judged rows, and two agreeing
            # human reviews unless an adjudicator decided.
            models.CheckConstraint(condition=~models.Q(provenance="llm_judged"), name="evalrecord_not_llm_judged"),
            models.CheckConstraint(
                condition=models.Q(adjudicated=True) | models.Q(agreeing_reviews__gte=2),
                name="evalrecord_two_agreeing_humans_or_adjudicated",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.version_id}#{self.position} item {self.item_id}"


class ContaminationReport(EvalWallModel):
    """The offending pairs of one contamination check, eval text beside training text.

    Kept here, on the evalsets side, because it holds eval text: the trainer role can read the
    check's verdict and counts (training.SnapshotCheck), never this. Write-once, like the check.
    """

    snapshot_check = models.OneToOneField(
        "training.SnapshotCheck",
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The verdict these pairs explain.",
    )
    pairs = models.JSONField(default=list, help_text="[{kind, score, ..., train: {...}, eval: {...}}], best first.")
    pairs_truncated = models.BooleanField(default=False, help_text="More pairs offended than are listed.")

    objects = EvalWallManager()

    def __str__(self) -> str:
        return f"pairs of check {self.snapshot_check_id}"


class HashVerification(EvalWallModel):
    """One recomputation of a frozen eval set version's or training snapshot's sha256 from its stored
    rows (``manage.py verify_evalsets``). Append-only: the rows it checks cannot be updated, so the
    verdicts live here, one row per check."""

    version = models.ForeignKey(
        EvalSetVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="verifications"
    )
    snapshot = models.ForeignKey(
        "training.TrainingSnapshot", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    ok = models.BooleanField()
    stored_sha256 = models.CharField(max_length=64, help_text="The sha256 the version or snapshot row holds.")
    computed_sha256 = models.CharField(max_length=64, help_text="The sha256 recomputed from its records.")
    record_count = models.PositiveIntegerField(help_text="Records read.")
    problems = models.JSONField(default=list, blank=True, help_text="What did not match, naming each record.")
    verified_at = models.DateTimeField(auto_now_add=True)

    objects = EvalWallManager()

    class Meta:
        ordering = ["-verified_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(version__isnull=False, snapshot__isnull=True)
                | models.Q(version__isnull=True, snapshot__isnull=False),
                name="hashverification_one_subject",
            ),
        ]

    def __str__(self) -> str:
        return f"{'ok' if self.ok else 'MISMATCH'} at {self.verified_at:%Y-%m-%d %H:%M}"


class ContaminationCheckRun(EvalWallModel, BackgroundWork):
    """A requested contamination check of one training snapshot, run by a worker: the background-work row a
    page or an API caller polls. ``verdict`` is the check it recorded once it succeeded.

    On the evalsets side (like the pairs): the check reads eval text, and a failure's message may quote it."""

    snapshot = models.ForeignKey("training.TrainingSnapshot", on_delete=models.PROTECT, related_name="+")
    verdict = models.ForeignKey(
        "training.SnapshotCheck", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = EvalWallManager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Contamination check run {self.pk} of snapshot {self.snapshot_id} ({self.status})"
