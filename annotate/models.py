"""Projects, items and the human judgements made on them.

Payload shapes (``Annotation.payload``, ``AnnotationRevision.payload``, ``ItemResult.payload``,
``Adjudication.payload``), by task kind:

- gold:       {"action": "accept"|"edit"|"write"|"unusable", "answer": str,
               "source_index": int|None, "reason": str}
- preference: {"choice": "response"|"tie"|"both_bad", "chosen": int|None, "rejected": int|None,
               "strength": "slight"|"clear"|None, "rationale": str}
               (indices into ``Item.responses``, never display positions)
- rubric:     {"response_index": int|None, "scores": {criterion_key: value}}

``annotate/payloads.py`` has them as typed values.
"""

from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.urls import reverse

from config.background import BackgroundWork


class TaskKind(models.TextChoices):
    GOLD = "gold", "Gold answer"
    PREFERENCE = "preference", "Preference pair"
    RUBRIC = "rubric", "Rubric scoring"


class Provenance(models.TextChoices):
    HUMAN = "human", "Human-written"
    PRODUCTION_LOG = "production_log", "Production log"
    DISTILLED = "distilled", "Distilled from a stronger model"
    SELF_GENERATED = "self_generated", "Self-generated"
    LLM_JUDGED = "llm_judged", "LLM-judged"
    RULE_BASED = "rule_based", "Rule-based"
    # A model's output made for judging it (a generation run's response in a comparison queue): never
    # training data (the database refuses it in a snapshot) and never eval data.
    MODEL_GENERATED = "model_generated", "Model-generated for evaluation"


# What imported rows may say they are: model outputs made for evaluation come from the judging app only.
IMPORTABLE_PROVENANCES = [(value, label) for value, label in Provenance.choices if value != Provenance.MODEL_GENERATED]


class Split(models.TextChoices):
    TRAIN = "train", "Train"
    EVAL = "eval", "Eval"


class ConsensusRule(models.TextChoices):
    UNANIMOUS = "unanimous", "Unanimous"
    MAJORITY = "majority", "Majority"
    MEAN_WITHIN_TOLERANCE = "mean_within_tolerance", "Mean score within tolerance"


class Project(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    guidelines = models.TextField(blank=True, help_text="What reviewers read before they start (plain text).")
    task_kinds = models.JSONField(
        default=list, help_text="Any of gold, preference, rubric: one project may combine them."
    )
    overlap_k = models.PositiveSmallIntegerField(default=2, help_text="Independent reviews per item.")
    eval_share = models.DecimalField(
        max_digits=4, decimal_places=3, default=Decimal("0.200"), help_text="Share of items drawn into the eval split."
    )
    split_seed = models.BigIntegerField(default=0, help_text="Seed of the train/eval draw.")
    lease_minutes = models.PositiveIntegerField(default=30, help_text="How long a reviewer holds an item.")
    consensus_rule = models.CharField(max_length=32, choices=ConsensusRule.choices, default=ConsensusRule.MAJORITY)
    score_tolerance = models.FloatField(default=0.5, help_text="Largest score spread that counts as agreement.")
    rubric_signoffs_required = models.PositiveSmallIntegerField(default=2)
    calibration_required = models.BooleanField(default=False)
    calibration_threshold = models.FloatField(default=0.667, help_text="Krippendorff's alpha to reach.")
    reviewers_see_evalsets = models.BooleanField(default=False)
    audit_gates = models.JSONField(
        default=dict,
        blank=True,
        help_text="Per audit finding type, {action: off|warn|block, min_share}: what a finding does to a snapshot "
        "(defaults in annotate/audit.py: DEFAULT_GATES).",
    )
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="goldset_projects", blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=models.Q(overlap_k__gte=1), name="project_overlap_k_positive"),
            models.CheckConstraint(
                condition=models.Q(eval_share__gte=0) & models.Q(eval_share__lte=1),
                name="project_eval_share_0_1",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("annotate:project-detail", kwargs={"slug": self.slug})

    def clean(self) -> None:
        unknown = [k for k in self.task_kinds or [] if k not in TaskKind.values]
        if not self.task_kinds or unknown:
            raise ValidationError(
                {"task_kinds": f"Choose one or more of {', '.join(TaskKind.values)}; got {self.task_kinds!r}."}
            )


class ImportBatch(BackgroundWork):
    """One uploaded file's import: background work (status, progress, message) with the import's counts."""

    class Mode(models.TextChoices):
        ALL_OR_NOTHING = "all_or_nothing", "Import nothing if any row is bad"
        SKIP_BAD = "skip_bad", "Import the good rows, hand back the bad ones"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="imports")
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    filename = models.CharField(max_length=255)
    file_format = models.CharField(max_length=8)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.ALL_OR_NOTHING)
    provenance = models.CharField(max_length=32, choices=Provenance.choices, default=Provenance.HUMAN)
    stored_path = models.CharField(max_length=500, blank=True, help_text="The uploaded file, kept until done.")
    bytes_total = models.BigIntegerField(default=0)
    bytes_read = models.BigIntegerField(default=0)
    rows_seen = models.IntegerField(default=0)
    rows_imported = models.IntegerField(default=0)
    rows_rejected = models.IntegerField(default=0)
    duplicates = models.IntegerField(default=0, help_text="Rows not imported because their content is already there.")
    near_duplicates = models.IntegerField(
        default=0, help_text="Of the duplicates, those equal only after normalization (case, spacing, Unicode form)."
    )
    errors = models.JSONField(default=list, help_text="The first errors, each {line, field, message}.")
    rejected_path = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "import batches"

    def __str__(self) -> str:
        return f"{self.filename} → {self.project}"


class Item(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="items")
    kind = models.CharField(max_length=16, choices=TaskKind.choices)
    prompt = models.TextField(help_text="Plain-text prompt, or the chat rendered as text when messages are given.")
    messages = models.JSONField(null=True, blank=True, help_text="Chat turns [{role, content}], if any.")
    responses = models.JSONField(default=list, help_text="Candidate responses [{text, model}].")
    rubric_response = models.PositiveSmallIntegerField(
        default=0,
        db_default=0,
        help_text="Rubric items: the index into responses of the response reviewers score, in any display order.",
    )
    metadata = models.JSONField(default=dict, blank=True)
    provenance = models.CharField(max_length=32, choices=Provenance.choices, default=Provenance.HUMAN)
    content_hash = models.CharField(max_length=64, help_text="sha256 of the normalized prompt and responses.")
    split = models.CharField(max_length=8, choices=Split.choices)
    import_batch = models.ForeignKey(ImportBatch, null=True, blank=True, on_delete=models.SET_NULL)
    source_line = models.IntegerField(null=True, blank=True)
    is_check = models.BooleanField(default=False, help_text="A known-answer item seeded to measure reviewers.")
    check_answer = models.JSONField(null=True, blank=True)
    is_calibration = models.BooleanField(default=False)
    unusable_reason = models.TextField(
        blank=True,
        default="",
        db_default="",
        help_text="Set by an admin curating training data: why the item must not be trained on (never snapshotted).",
    )
    review_count = models.PositiveSmallIntegerField(
        default=0,
        editable=False,
        help_text="Leases on this item that are active or submitted; kept by database triggers, capped at overlap k.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "content_hash"], name="item_unique_content_per_project"),
            models.CheckConstraint(condition=models.Q(review_count__gte=0), name="item_review_count_non_negative"),
        ]
        indexes = [
            models.Index(fields=["project", "split"]),
            models.Index(fields=["project", "kind"]),
            # Keyset pages of a project's items in id order (exports, the API's lists): each page one range scan.
            models.Index(fields=["project", "id"], name="item_project_id_order"),
            # The queue's "next item" scan: items closest to completion first, then by id.
            models.Index(
                fields=["project", "-review_count", "id"],
                name="item_queue_order",
                condition=models.Q(is_calibration=False),
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.prompt[:60]}"

    def clean(self) -> None:
        if self.responses and self.rubric_response >= len(self.responses):
            last = len(self.responses) - 1
            raise ValidationError({"rubric_response": f"Name one of the responses, 0 to {last}."})

    @property
    def scored_response_index(self) -> int | None:
        """The response a rubric review of this item scores (None when the item has no responses)."""
        return self.rubric_response if self.responses else None


class Rubric(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="rubrics")
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="rubric_unique_name")]

    def __str__(self) -> str:
        return self.name


class RubricVersion(models.Model):
    """One immutable version of a rubric; criteria are a list of
    {key, name, scale: nominal|ordinal|interval|binary, levels: [{value, label, description, example}]}."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PROPOSED = "proposed", "Proposed (collecting sign-offs)"
        CALIBRATING = "calibrating", "Calibrating"
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired"

    rubric = models.ForeignKey(Rubric, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    criteria = models.JSONField(default=list)
    notes = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    proposed_at = models.DateTimeField(null=True, blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["rubric", "number"]
        constraints = [models.UniqueConstraint(fields=["rubric", "number"], name="rubricversion_unique_number")]

    def __str__(self) -> str:
        return f"{self.rubric} v{self.number}"


class RubricSignoff(models.Model):
    version = models.ForeignKey(RubricVersion, on_delete=models.CASCADE, related_name="signoffs")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "reviewer"], name="signoff_once")]


class Lease(models.Model):
    """One reviewer's hold on one item. At most one row per (item, reviewer), ever."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"
        EXPIRED = "expired", "Expired"
        RELEASED = "released", "Released"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="leases")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="leases")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="goldset_leases")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    display_order = models.JSONField(default=list, help_text="Response indices in the order shown to this reviewer.")
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    submitted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["item", "reviewer"], name="lease_once_per_reviewer")]
        indexes = [
            models.Index(fields=["project", "status", "expires_at"]),
            models.Index(fields=["reviewer", "status"]),
        ]

    def __str__(self) -> str:
        return f"{self.reviewer} ← item {self.item_id} ({self.status})"


class Annotation(models.Model):
    """A reviewer's current judgement of an item; every submission is kept as a revision."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="annotations")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="goldset_annotations")
    kind = models.CharField(max_length=16, choices=TaskKind.choices)
    payload = models.JSONField(help_text="The latest revision's payload.")
    revision = models.PositiveIntegerField(default=1)
    rubric_version = models.ForeignKey(RubricVersion, null=True, blank=True, on_delete=models.PROTECT)
    display_order = models.JSONField(default=list)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["item", "reviewer"], name="annotation_once_per_reviewer")]
        indexes = [models.Index(fields=["reviewer", "created_at"])]

    def __str__(self) -> str:
        return f"{self.reviewer} on item {self.item_id} r{self.revision}"


class AnnotationRevision(models.Model):
    annotation = models.ForeignKey(Annotation, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    payload = models.JSONField()
    rubric_version = models.ForeignKey(RubricVersion, null=True, blank=True, on_delete=models.PROTECT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["annotation", "number"]
        constraints = [models.UniqueConstraint(fields=["annotation", "number"], name="revision_unique_number")]


class Flag(models.Model):
    """A reviewer's report that an item is broken (wrong, harmful, unanswerable), for an admin to resolve."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="flags")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    reason = models.TextField()
    resolved = models.BooleanField(default=False)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.TextField(blank=True, help_text="What the admin did about it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]


class ItemResult(models.Model):
    """What an item's reviews add up to. Downstream (eval sets, training snapshots) reads only
    rows with status consensus or adjudicated."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        CONSENSUS = "consensus", "Consensus"
        DISPUTED = "disputed", "Disputed"
        ADJUDICATED = "adjudicated", "Adjudicated"

    item = models.OneToOneField(Item, on_delete=models.CASCADE, related_name="result")
    kind = models.CharField(max_length=16, choices=TaskKind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    payload = models.JSONField(null=True, blank=True)
    agreement = models.FloatField(null=True, blank=True, help_text="Share of reviews that agree with the result.")
    reviewer_ids = models.JSONField(default=list)
    rubric_version = models.ForeignKey(RubricVersion, null=True, blank=True, on_delete=models.PROTECT)
    decided_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"item {self.item_id}: {self.status}"


class Adjudication(models.Model):
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="adjudications")
    adjudicator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    payload = models.JSONField()
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)


class ExportLine(models.Model):
    """An item's annotation-export line (one JSON object), as the worker last built it
    (``annotate/export_cache.py``). The item's key is a real foreign key with ON DELETE CASCADE, added in
    SQL: the line goes with its item whoever deletes it."""

    item_id = models.BigIntegerField(primary_key=True)
    line = models.TextField()
    built_at = models.DateTimeField()


class ExportLineChange(models.Model):
    """An item whose stored export line may be out of date: written by database triggers in the
    transaction that made the change, deleted by the refresh that rebuilt the line."""

    item_id = models.BigIntegerField(db_index=True)


class AgreementReport(BackgroundWork):
    """A computed agreement report, cached by a fingerprint of the data it was built from.
    Large projects compute it in a Celery task that writes progress here."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="agreement_reports")
    rubric_version = models.ForeignKey(RubricVersion, null=True, blank=True, on_delete=models.CASCADE)
    fingerprint = models.CharField(max_length=64, help_text="Annotation count and last change the report covers.")
    result = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["project", "fingerprint"])]

    def __str__(self) -> str:
        return f"agreement report for {self.project} ({self.status})"


class ApiToken(models.Model):
    """A personal API token. Only its sha256 is stored: the token itself is shown once, when it is made.

    A token acts as its user, with the same roles and project memberships as the pages, capped by its
    scope: ``read`` (safe methods), ``write`` (also what a reviewer changes: submit, skip), ``admin``
    (also what needs the admin role)."""

    class Scope(models.TextChoices):
        READ = "read", "Read"
        WRITE = "write", "Read and write"
        ADMIN = "admin", "Read, write and administer"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="goldset_api_tokens")
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. 'distillation pipeline'.")
    prefix = models.CharField(max_length=16, unique=True, help_text="The token's public start, to find its row.")
    digest = models.CharField(max_length=64, help_text="sha256 of the whole token (hex).")
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.READ)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(scope__in=["read", "write", "admin"]), name="apitoken_scope_known"
            ),
            models.CheckConstraint(condition=~models.Q(digest=""), name="apitoken_digest_set"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class AdminAction(models.Model):
    """One admin action that changed data (a freeze, a snapshot, a job started or cancelled, an acknowledged
    audit finding, a member added, changed or removed): append-only, enforced by the database's write-once
    triggers (config/writeonce.py). The trainer role has no privilege on it.

    References are kept without foreign-key constraints, so deleting a user or a project leaves the log whole
    (a constraint's cascade would be an UPDATE or DELETE, which the triggers refuse)."""

    class Action(models.TextChoices):
        EVALSET_FREEZE = "evalset_freeze", "Eval set frozen"
        SNAPSHOT_CREATE = "snapshot_create", "Training snapshot made"
        JOB_START = "job_start", "Training job started"
        JOB_CANCEL = "job_cancel", "Training job cancelled"
        AUDIT_ACKNOWLEDGE = "audit_acknowledge", "Audit finding acknowledged"
        MEMBER_ADD = "member_add", "Member added"
        MEMBER_ROLE = "member_role", "Member's role set"
        MEMBER_REMOVE = "member_remove", "Member removed"

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    actor_name = models.CharField(max_length=150, blank=True, help_text="The username when it happened.")
    action = models.CharField(max_length=32, choices=Action.choices)
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    target = models.CharField(max_length=200, help_text="What it acted on, e.g. 'training.TrainingJob:12'.")
    summary = models.TextField(help_text="What happened, in words.")
    details = models.JSONField(default=dict, blank=True, help_text="Ids and names; never eval text.")

    class Meta:
        ordering = ["-at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(
                    action__in=[
                        "evalset_freeze",
                        "snapshot_create",
                        "job_start",
                        "job_cancel",
                        "audit_acknowledge",
                        "member_add",
                        "member_role",
                        "member_remove",
                    ]
                ),
                name="adminaction_action_known",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_name or '?'} {self.action} {self.target}"
