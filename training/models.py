"""Frozen training data. Snapshots, their records and their contamination checks are write-once:
the database rejects UPDATE and DELETE (and TRUNCATE on PostgreSQL)."""

from django.conf import settings
from django.db import models

from config.background import BackgroundWork


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

    def get_absolute_url(self) -> str:
        from django.urls import reverse

        return reverse("training:snapshot-detail", kwargs={"snapshot_id": self.pk})


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
    lineage = models.JSONField(
        default=dict,
        blank=True,
        help_text="Where the example came from when the snapshot was made: {provenance, source, rejected_source, "
        "decided_by, agreement, left_picks, picks, project_id}. Not part of the content hash.",
    )

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
    evalset_versions = models.JSONField(default=list, blank=True, help_text="[{id, name, sha256}] checked against.")
    threshold = models.FloatField(help_text="Share of a text's n-grams found in an eval record that blocks it.")
    report = models.JSONField(default=dict, help_text="Counts and the offending pairs, side by side.")
    checked_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-checked_at", "-id"]
        get_latest_by = ["checked_at", "id"]


class TrainingJob(models.Model):
    """One QLoRA fine-tune of a base model on a snapshot. The gpu worker (trainer role) reads this row
    and writes only WORKER_FIELDS of it (plus its claim and its end), through the functions in
    training/dbfunctions.py that check the job's secret; everything else is written by the web side."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Method(models.TextChoices):
        SFT = "sft", "SFT"
        DPO = "dpo", "DPO"
        SFT_DPO = "sft_dpo", "SFT, then DPO on the SFT adapter"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)
    # The columns a running job's gpu worker may write, besides heartbeat_at (always), worker and
    # started_at (on its claim), and status, error and finished_at (when it ends). The database
    # functions that take the worker's writes are generated from this list after every migrate: a
    # new worker-written field is one more name here, plus its migration.
    WORKER_FIELDS = (
        "phase",
        "step",
        "total_steps",
        "epoch",
        "loss",
        "log_tail",
        "output_dir",
        "last_checkpoint",
        "manifest",
        "step_advanced_at",
        "stall_after_s",
    )

    snapshot = models.ForeignKey(TrainingSnapshot, on_delete=models.PROTECT, related_name="jobs")
    base_model = models.CharField(max_length=500, help_text="A local directory or a hub id.")
    method = models.CharField(max_length=16, choices=Method.choices)
    config = models.JSONField(help_text="training.config.TrainingConfig as a dict.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    preflight = models.JSONField(default=dict, blank=True, help_text="What the preflight found before queueing.")
    audit = models.JSONField(
        default=dict,
        blank=True,
        help_text="The snapshot's audit when the job was queued: its id, findings and each acknowledgement of a "
        "blocking one (who, when, why). Goes into the adapter's manifest.",
    )
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")
    resume_from = models.CharField(max_length=500, blank=True, help_text="Output dir of the job this one resumes.")
    cancel_requested = models.BooleanField(default=False)
    phase = models.CharField(max_length=8, blank=True)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    epoch = models.FloatField(null=True, blank=True)
    loss = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    log_tail = models.TextField(blank=True, help_text="The last lines of the training log.")
    output_dir = models.CharField(max_length=500, blank=True)
    last_checkpoint = models.CharField(max_length=500, blank=True)
    manifest = models.JSONField(default=dict, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    step_advanced_at = models.DateTimeField(
        null=True, blank=True, help_text="When a training step last finished; empty while none is due (loading)."
    )
    stall_after_s = models.FloatField(
        null=True, blank=True, help_text="Seconds without a step after which the running job counts as stalled."
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "queued_at"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["queued", "running", "succeeded", "failed", "cancelled"]),
                name="trainingjob_status_known",
            ),
            models.CheckConstraint(
                condition=~models.Q(status="failed") | ~models.Q(error=""),
                name="trainingjob_failed_has_reason",
            ),
        ]

    def __str__(self) -> str:
        return f"Job {self.pk} ({self.get_method_display()}, {self.status})"

    def get_absolute_url(self) -> str:
        from django.urls import reverse

        return reverse("training:job-detail", kwargs={"job_id": self.pk})

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


class TrainingPreflight(BackgroundWork):
    """A job's config checked against its base model and snapshot on a worker, before the job is queued.

    The web side creates it and reads it; the worker claims it, reports progress and records the result.
    The background-work shape: status, progress, message (what the worker is doing, or why it failed),
    started/finished; ``succeeded`` means the preflight passed (found no error).
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Passed"
        FAILED = "failed", "Failed"

    FINISHED = (Status.SUCCEEDED, Status.FAILED)  # a preflight is not cancelled: it takes seconds

    snapshot = models.ForeignKey(TrainingSnapshot, on_delete=models.PROTECT, related_name="preflights")
    base_model = models.CharField(max_length=500, help_text="A local directory or a hub id.")
    method = models.CharField(max_length=16, choices=TrainingJob.Method.choices)
    config = models.JSONField(help_text="training.config.TrainingConfig as a dict.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    result = models.JSONField(default=dict, blank=True, help_text="{ok, errors, warnings, samples, stats}.")
    worker = models.CharField(max_length=200, blank=True)
    job = models.OneToOneField(
        TrainingJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="preflight_run"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(null=True, blank=True, help_text="The worker's last word.")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["queued", "running", "succeeded", "failed"]),
                name="trainingpreflight_status_known",
            ),
            models.CheckConstraint(
                condition=~models.Q(status="failed") | ~models.Q(message=""),
                name="trainingpreflight_failed_has_reason",
            ),
        ]

    def __str__(self) -> str:
        return f"Preflight {self.pk} ({self.method}, {self.status})"

    def get_absolute_url(self) -> str:
        from django.urls import reverse

        return reverse("training:preflight-detail", kwargs={"preflight_id": self.pk})


class JobSecret(models.Model):
    """The sha256 of the secret a job's gpu worker proves itself with, issued when the job is queued.

    The secret itself travels only in the job's Celery message. The trainer role has no privilege on
    this table: only the job-write functions (owned by the owner role) compare against it.
    """

    job = models.OneToOneField(TrainingJob, primary_key=True, on_delete=models.CASCADE, related_name="+")
    secret_sha256 = models.CharField(max_length=64)

    def __str__(self) -> str:
        return f"secret of job {self.job_id}"


class PreflightSecret(models.Model):
    """The sha256 of the secret a preflight's worker proves itself with (as ``JobSecret`` for a job)."""

    preflight = models.OneToOneField(TrainingPreflight, primary_key=True, on_delete=models.CASCADE, related_name="+")
    secret_sha256 = models.CharField(max_length=64)

    def __str__(self) -> str:
        return f"secret of preflight {self.preflight_id}"


class JobProgress(models.Model):
    """A progress row the trainer callback writes every few steps (insert-only for the worker)."""

    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="progress")
    phase = models.CharField(max_length=8)
    step = models.PositiveIntegerField()
    total_steps = models.PositiveIntegerField()
    epoch = models.FloatField(null=True)
    loss = models.FloatField(null=True)
    learning_rate = models.FloatField(null=True)
    grad_norm = models.FloatField(null=True)
    tokens_per_second = models.FloatField(null=True)
    reward_margin = models.FloatField(null=True, help_text="DPO: mean chosen − rejected reward.")
    reward_accuracy = models.FloatField(null=True, help_text="DPO: share of pairs ranked right.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "id"]
        constraints = [models.UniqueConstraint(fields=["job", "phase", "step"], name="jobprogress_unique_step")]


class SnapshotAudit(BackgroundWork):
    """What a snapshot would teach: the audit's findings (annotate/audit.py), computed by a worker.

    The report lists each finding with its share, its lift over a baseline and example record ids, and
    whether the projects' gates make it block the snapshot. A blocked snapshot starts no job until every
    blocking finding is acknowledged with a reason (``AuditAcknowledgement``) or the data is fixed (a new
    snapshot: a snapshot is never edited)."""

    snapshot = models.ForeignKey(TrainingSnapshot, on_delete=models.PROTECT, related_name="audits")
    report = models.JSONField(default=dict, blank=True)
    gates = models.JSONField(default=dict, blank=True, help_text="The gates the findings were judged by.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        get_latest_by = ["created_at", "id"]

    def __str__(self) -> str:
        return f"Audit {self.pk} of snapshot {self.snapshot_id} ({self.status})"

    def get_absolute_url(self) -> str:
        from django.urls import reverse

        return reverse("training:audit-detail", kwargs={"audit_id": self.pk})

    @property
    def findings(self) -> list[dict]:
        return (self.report or {}).get("findings", [])

    @property
    def blocking(self) -> list[dict]:
        return [f for f in self.findings if f.get("gate") == "block"]


class AuditAcknowledgement(models.Model):
    """An admin's reason for training on a snapshot despite one blocking finding (write-once)."""

    audit = models.ForeignKey(SnapshotAudit, on_delete=models.PROTECT, related_name="acknowledgements")
    finding_key = models.CharField(max_length=300, help_text="The finding's key in the audit report.")
    reason = models.TextField()
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    acknowledged_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["acknowledged_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["audit", "finding_key"], name="auditacknowledgement_once"),
            models.CheckConstraint(condition=~models.Q(reason=""), name="auditacknowledgement_has_reason"),
        ]

    def __str__(self) -> str:
        return f"{self.finding_key} acknowledged by {self.acknowledged_by_id}"
