"""Judging a fine-tune: generation runs on eval prompts, blind human comparisons, capability regression.

A ``GenerationRun`` asks a model (a base, or a base plus a trained adapter) for one response per prompt
of a frozen eval set version (or of the capability-regression suite), with recorded decoding settings.
The gpu worker that runs it logs in as the trainer role: it reads the run row (which holds no eval
text), reads the prompts from a file the web side wrote for that run alone, and writes only through
the secret-checked functions in ``evalsets/judging/dbfunctions.py``. Its outputs are write-once, tagged
model-generated, and the database refuses them in a training snapshot (see migration 0001).
"""

from django.conf import settings
from django.db import models
from django.urls import reverse

from config.background import BackgroundWork


class Decoding(models.TextChoices):
    GREEDY = "greedy", "Greedy"
    SAMPLE = "sample", "Sampling"


class GenerationRun(BackgroundWork):
    """One model's responses to one prompt set, with the model's identity and the decoding settings."""

    class Source(models.TextChoices):
        EVAL = "eval", "Eval set version"
        REGRESSION = "regression", "Capability regression suite"

    # What the gpu worker may write while the run runs, besides its claim, its outputs and its end.
    WORKER_FIELDS = ("progress", "message", "log_tail", "model_identity", "responses_per_second", "tokens_per_second")

    source = models.CharField(max_length=16, choices=Source.choices, default=Source.EVAL)
    evalset_version = models.ForeignKey(
        "evalsets.EvalSetVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    suite = models.JSONField(
        default=dict, blank=True, help_text="Regression runs: {seed, per_category, project_id, sha256, count}."
    )
    label = models.CharField(max_length=100, help_text="What the admin calls this model, e.g. 'base' or 'support v2'.")
    job = models.ForeignKey(
        "training.TrainingJob",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The training job whose adapter is applied; empty for the base model alone.",
    )
    base_model = models.CharField(max_length=500, help_text="A local directory or a hub id.")
    adapter_dir = models.CharField(max_length=500, blank=True)
    decoding = models.JSONField(help_text="evalsets.judging.generate.DecodingConfig as a dict.")
    model_identity = models.JSONField(
        default=dict,
        blank=True,
        help_text="Written by the worker: {base_model: {source, sha256|revision}, adapter_manifest_sha256}.",
    )
    prompt_count = models.PositiveIntegerField(default=0)
    output_count = models.PositiveIntegerField(default=0)
    responses_per_second = models.FloatField(null=True, blank=True)
    tokens_per_second = models.FloatField(null=True, blank=True)
    log_tail = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")
    worker = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(source="eval", evalset_version__isnull=False)
                | models.Q(source="regression", evalset_version__isnull=True),
                name="generationrun_source_matches",
            ),
            models.CheckConstraint(
                condition=~models.Q(status="failed") | ~models.Q(message=""), name="generationrun_failed_has_reason"
            ),
        ]

    def __str__(self) -> str:
        return f"Run {self.pk} ({self.label})"

    def get_absolute_url(self) -> str:
        return reverse("judging:run-detail", kwargs={"run_id": self.pk})

    @property
    def is_adapter(self) -> bool:
        return self.job_id is not None

    @property
    def base_model_hash(self) -> str:
        """The base model's sha256 (local directory) or hub id and revision, once the worker loaded it."""
        base = (self.model_identity or {}).get("base_model") or {}
        return base.get("sha256") or " @ ".join(str(v) for v in (base.get("id"), base.get("revision")) if v)

    @property
    def adapter_manifest_hash(self) -> str:
        return (self.model_identity or {}).get("adapter_manifest_sha256") or ""

    @property
    def greedy(self) -> bool:
        return not (self.decoding or {}).get("temperature")


class GenerationSecret(models.Model):
    """The sha256 of the secret a run's gpu worker proves itself with (the trainer role cannot read it)."""

    run = models.OneToOneField(GenerationRun, primary_key=True, on_delete=models.CASCADE, related_name="+")
    secret_sha256 = models.CharField(max_length=64)

    def __str__(self) -> str:
        return f"secret of run {self.run_id}"


class GenerationOutput(models.Model):
    """One response of a run's model to one prompt. Write-once, and never training data: the column
    ``model_generated`` is always true, and the database refuses a snapshot record with this text."""

    run = models.ForeignKey(GenerationRun, on_delete=models.PROTECT, related_name="outputs")
    position = models.PositiveIntegerField(help_text="The prompt's place in the run's prompt file.")
    record_id = models.BigIntegerField(null=True, blank=True, help_text="evalsets.EvalRecord id (eval runs).")
    check_key = models.CharField(max_length=200, blank=True, help_text="Regression runs: the check's key.")
    text = models.TextField()
    text_sha256 = models.CharField(max_length=64, help_text="sha256 of the text (UTF-8), computed by the database.")
    new_tokens = models.PositiveIntegerField(default=0)
    finish_reason = models.CharField(max_length=16, blank=True, help_text="eos, or length (max_new_tokens reached).")
    model_generated = models.BooleanField(default=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "position"], name="generationoutput_unique_position"),
            models.CheckConstraint(condition=models.Q(model_generated=True), name="generationoutput_model_generated"),
        ]
        indexes = [models.Index(fields=["text_sha256"], name="generationoutput_text_sha")]

    def __str__(self) -> str:
        return f"run {self.run_id} #{self.position}"


class Comparison(models.Model):
    """A blind human judgement of runs on one eval set version, worked in an annotate project.

    Pairwise: two runs' responses side by side (run A the baseline, run B the challenger). Reference: one run's
    response (run A) against the eval record's reference answer. Rubric: one run's responses (run A) scored under
    the eval set project's signed-off rubric version."""

    class Mode(models.TextChoices):
        PAIRWISE = "pairwise", "Which of the two responses is better"
        REFERENCE = "reference", "Is the response as good as the reference answer"
        RUBRIC = "rubric", "Rubric scores of one run's responses"

    SINGLE_RUN_MODES = (Mode.REFERENCE, Mode.RUBRIC)

    name = models.CharField(max_length=200)
    run_a = models.ForeignKey(
        GenerationRun,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The baseline (pairwise), or the run judged (reference and rubric modes).",
    )
    run_b = models.ForeignKey(
        GenerationRun,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The challenger (pairwise only).",
    )
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.PAIRWISE)
    rubric_version = models.ForeignKey(
        "annotate.RubricVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Rubric mode: the eval set project's active (signed-off) version the responses are scored under.",
    )
    project = models.OneToOneField(
        "annotate.Project", on_delete=models.PROTECT, related_name="comparison", help_text="Where reviewers work it."
    )
    seed = models.BigIntegerField(help_text="Seed of the sides' draw.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=~models.Q(run_a=models.F("run_b")), name="comparison_two_runs"),
            models.CheckConstraint(
                condition=models.Q(mode="pairwise", run_b__isnull=False)
                | models.Q(mode__in=["reference", "rubric"], run_b__isnull=True),
                name="comparison_runs_match_mode",
            ),
            models.CheckConstraint(
                condition=~models.Q(mode="rubric") | models.Q(rubric_version__isnull=False),
                name="comparison_rubric_has_version",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("judging:comparison-detail", kwargs={"comparison_id": self.pk})

    @property
    def runs(self) -> list[GenerationRun]:
        return [self.run_a] if self.run_b_id is None else [self.run_a, self.run_b]


class ComparisonItem(models.Model):
    """Which run wrote which response of one comparison item: kept here, where reviewers cannot reach it."""

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="items")
    item = models.OneToOneField("annotate.Item", on_delete=models.CASCADE, related_name="+")
    record_id = models.BigIntegerField(help_text="evalsets.EvalRecord id of the prompt.")
    output_a = models.ForeignKey(GenerationOutput, on_delete=models.PROTECT, related_name="+")
    output_b = models.ForeignKey(
        GenerationOutput, null=True, blank=True, on_delete=models.PROTECT, related_name="+", help_text="Pairwise only."
    )
    a_index = models.PositiveSmallIntegerField(
        help_text="Index into Item.responses of run A's response (0 or 1; in reference mode the other is the "
        "reference answer)."
    )

    class Meta:
        ordering = ["comparison", "id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(a_index__in=[0, 1]), name="comparisonitem_a_index_0_1"),
            models.UniqueConstraint(fields=["comparison", "record_id"], name="comparisonitem_unique_record"),
        ]

    @property
    def b_index(self) -> int:
        return 1 - self.a_index


class RegressionCheck(models.Model):
    """A project's own capability check: a prompt and how its answer is verified."""

    class Kind(models.TextChoices):
        EXACT = "exact", "Exact (after trimming, case-insensitive)"
        REGEX = "regex", "Regular expression"
        NUMERIC = "numeric", "Number within a tolerance"

    project = models.ForeignKey("annotate.Project", on_delete=models.CASCADE, related_name="regression_checks")
    category = models.CharField(max_length=100, default="project")
    prompt = models.TextField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    expected = models.CharField(max_length=2000, help_text="The answer, the pattern, or the number.")
    tolerance = models.FloatField(default=0.0, help_text="Numeric checks: largest absolute difference accepted.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "id"]
        constraints = [models.CheckConstraint(condition=models.Q(tolerance__gte=0), name="regressioncheck_tol_ge_0")]

    def __str__(self) -> str:
        return f"{self.category}: {self.prompt[:40]}"


class RegressionThreshold(models.Model):
    """How much a category's accuracy may drop (adapter against base) before the adapter's page flags it."""

    project = models.OneToOneField("annotate.Project", on_delete=models.CASCADE, related_name="regression_threshold")
    max_drop = models.FloatField(default=0.05, help_text="A share: 0.05 flags a drop of more than 5 points.")

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(max_drop__gte=0) & models.Q(max_drop__lte=1), name="regressionthreshold_0_1"
            )
        ]

    def __str__(self) -> str:
        return f"{self.project}: at most {self.max_drop:.0%} drop"
