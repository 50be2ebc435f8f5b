"""Input of the judging pages, validated into typed values before any service runs."""

from __future__ import annotations

from django import forms

from evalsets.judging.generate import DecodingConfig
from evalsets.judging.models import Comparison, GenerationRun, RegressionCheck
from evalsets.models import EvalSetVersion
from training.models import TrainingJob

DEFAULTS = DecodingConfig()


class GenerationRunForm(forms.Form):
    label = forms.CharField(
        max_length=100, help_text="What to call this model in results, e.g. 'base' or 'support v2'."
    )
    version = forms.ModelChoiceField(
        queryset=EvalSetVersion.objects.select_related("project"), label="Eval set version", required=False
    )
    regression = forms.BooleanField(
        required=False, label="Run the capability regression suite instead of an eval set version"
    )
    job = forms.ModelChoiceField(
        queryset=TrainingJob.objects.filter(status=TrainingJob.Status.SUCCEEDED),
        required=False,
        label="Adapter (a finished training job)",
        help_text="Leave empty to run the base model alone.",
    )
    base_model = forms.CharField(
        max_length=500, required=False, help_text="Base model directory or hub id (only without an adapter)."
    )
    temperature = forms.FloatField(initial=DEFAULTS.temperature, min_value=0, max_value=5, help_text="0 = greedy.")
    top_p = forms.FloatField(initial=DEFAULTS.top_p, min_value=0.01, max_value=1)
    max_new_tokens = forms.IntegerField(initial=DEFAULTS.max_new_tokens, min_value=1, max_value=32768)
    seed = forms.IntegerField(initial=DEFAULTS.seed, min_value=0)
    batch_size = forms.IntegerField(initial=DEFAULTS.batch_size, min_value=1, max_value=1024)

    def clean(self):
        data = super().clean()
        if not data.get("regression") and not data.get("version"):
            self.add_error("version", "Choose the eval set version to answer (or the regression suite).")
        if data.get("job") is None and not (data.get("base_model") or "").strip():
            self.add_error("base_model", "Give the base model, or choose an adapter.")
        if data.get("job") is not None and (data.get("base_model") or "").strip():
            self.add_error("base_model", "An adapter brings its own base model: leave this empty.")
        return data

    def decoding(self) -> DecodingConfig:
        return DecodingConfig(**{k: self.cleaned_data[k] for k in DecodingConfig.__dataclass_fields__})


class ComparisonForm(forms.Form):
    name = forms.CharField(max_length=200)
    mode = forms.ChoiceField(
        choices=Comparison.Mode.choices,
        initial=Comparison.Mode.PAIRWISE,
        required=False,
        help_text="Two runs side by side (when left out); one run against the eval records' reference answers; "
        "or one run's "
        "responses scored under the eval set project's active rubric.",
    )
    run_a = forms.ModelChoiceField(
        queryset=GenerationRun.objects.filter(source="eval", status="succeeded"),
        label="Run A",
        help_text="The baseline of a pairwise comparison; the run judged in reference and rubric modes.",
    )
    run_b = forms.ModelChoiceField(
        queryset=GenerationRun.objects.filter(source="eval", status="succeeded"),
        label="Run B (challenger)",
        required=False,
        help_text="Pairwise only.",
    )
    overlap_k = forms.IntegerField(min_value=1, max_value=9, initial=2, label="Reviewers per item")
    reviewers = forms.ModelMultipleChoiceField(queryset=None, help_text="Who works the queue.")
    seed = forms.IntegerField(min_value=0, initial=0, help_text="Seed of the sides' draw.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from django.contrib.auth import get_user_model

        self.fields["reviewers"].queryset = get_user_model().objects.filter(is_active=True).order_by("username")

    def clean(self):
        data = super().clean()
        mode = data["mode"] = data.get("mode") or Comparison.Mode.PAIRWISE
        if mode == Comparison.Mode.PAIRWISE and data.get("run_a") and not data.get("run_b"):
            self.add_error("run_b", "A pairwise comparison needs the challenger run.")
        if mode in Comparison.SINGLE_RUN_MODES and data.get("run_b"):
            self.add_error("run_b", "Reference and rubric modes judge run A alone: leave run B empty.")
        return data


class DecodingForm(forms.Form):
    temperature = forms.FloatField(initial=DEFAULTS.temperature, min_value=0, max_value=5, help_text="0 = greedy.")
    top_p = forms.FloatField(initial=DEFAULTS.top_p, min_value=0.01, max_value=1)
    max_new_tokens = forms.IntegerField(initial=128, min_value=1, max_value=32768)
    seed = forms.IntegerField(initial=DEFAULTS.seed, min_value=0)
    batch_size = forms.IntegerField(initial=DEFAULTS.batch_size, min_value=1, max_value=1024)

    def decoding(self) -> DecodingConfig:
        return DecodingConfig(**{k: self.cleaned_data[k] for k in DecodingConfig.__dataclass_fields__})


class RegressionPairForm(DecodingForm):
    per_category = forms.IntegerField(initial=50, min_value=1, max_value=1000, label="Checks per category")
    suite_seed = forms.IntegerField(initial=0, min_value=0, label="Suite seed")


class RegressionCheckForm(forms.Form):
    category = forms.CharField(max_length=100, initial="project")
    prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}))
    kind = forms.ChoiceField(choices=RegressionCheck.Kind.choices)
    expected = forms.CharField(max_length=2000, help_text="The answer, the pattern, or the number.")
    tolerance = forms.FloatField(initial=0, min_value=0, help_text="Numeric checks only.")


class ThresholdForm(forms.Form):
    max_drop = forms.FloatField(min_value=0, max_value=1, label="Largest accepted drop (a share: 0.05 = 5 points)")
