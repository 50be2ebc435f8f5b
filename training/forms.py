"""Forms parse and validate input; they never write (the services do)."""

from __future__ import annotations

import dataclasses

from django import forms

from annotate.audit import matcher
from annotate.models import IMPORTABLE_PROVENANCES, Project, RubricVersion, TaskKind
from training.config import COMPUTE_DTYPES, QUANT_TYPES, TRI_STATE, TrainingConfig
from training.curation import SnapshotFilters
from training.models import TrainingJob, TrainingSnapshot

CHOICES = {
    "quant_type": QUANT_TYPES,
    "compute_dtype": COMPUTE_DTYPES,
    "gradient_checkpointing": TRI_STATE,
    "liger_kernel": TRI_STATE,
}


class SnapshotForm(forms.Form):
    """A new snapshot: which projects, which of their approved items (lineage filters), and what to leave out.

    ``audit``: the audit of a snapshot this one is curated from; its findings that name examples can be
    excluded (every example a finding is about), as can the items its contamination check flagged."""

    name = forms.CharField(max_length=200)
    projects = forms.ModelMultipleChoiceField(queryset=Project.objects.all(), widget=forms.CheckboxSelectMultiple)
    include_llm_judged = forms.BooleanField(
        required=False, help_text="Also take items whose provenance is LLM-judged (left out by default)."
    )
    adjudicated_only = forms.BooleanField(required=False, help_text="Only items an adjudicator decided.")
    min_agreement = forms.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        help_text="Only items whose reviews agreed at least this much (0 to 1; e.g. 1.0 for unanimous).",
    )
    provenances = forms.MultipleChoiceField(
        required=False,
        choices=IMPORTABLE_PROVENANCES,
        widget=forms.CheckboxSelectMultiple,
        help_text="Only these sources (none ticked: every source).",
    )
    kinds = forms.MultipleChoiceField(
        required=False,
        choices=[
            (TaskKind.GOLD, "Gold answers (SFT)"),
            (TaskKind.PREFERENCE, "Preference pairs (DPO)"),
            (TaskKind.RUBRIC, "Rubric-scored responses that reach the bar below (SFT)"),
        ],
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: all of them.",
    )
    rubric_version = forms.ModelChoiceField(
        required=False,
        queryset=RubricVersion.objects.filter(
            status__in=[RubricVersion.Status.ACTIVE, RubricVersion.Status.RETIRED]
        ).select_related("rubric"),
        help_text="Also take responses reviewers scored under this rubric version (none: rubric items stay out).",
    )
    rubric_min = forms.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        initial=1.0,
        label="Rubric bar",
        help_text="The share of each scored criterion's scale a response must reach: 1.0 is the top level.",
    )
    decided_from = forms.DateField(required=False, help_text="Only items decided on or after (YYYY-MM-DD).")
    decided_until = forms.DateField(required=False, help_text="Only items decided on or before (YYYY-MM-DD).")
    exclude_findings = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, label="Leave out every example of these findings"
    )
    exclude_contaminated = forms.BooleanField(
        required=False, label="Leave out the items its latest contamination check flagged"
    )
    exclude_items = forms.CharField(
        required=False, help_text="Item ids to leave out, comma-separated (examples picked by hand)."
    )
    from_snapshot = forms.IntegerField(required=False, widget=forms.HiddenInput)
    note = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args, audit=None, check=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.audit, self.check = audit, check
        findings = [f for f in (audit.findings if audit else []) if matcher(f) is not None]
        self.fields["exclude_findings"].choices = [
            (f["key"], f"{f['title']} ({f.get('count', '?')} examples)") for f in findings
        ]
        if not findings:
            del self.fields["exclude_findings"]
        if check is None or check.passed:
            del self.fields["exclude_contaminated"]

    def clean_exclude_items(self) -> tuple[int, ...]:
        raw = self.cleaned_data.get("exclude_items") or ""
        parts = [p.strip() for p in raw.replace(" ", ",").split(",") if p.strip()]
        bad = [p for p in parts if not p.isdigit()]
        if bad:
            raise forms.ValidationError(f"Item ids are whole numbers: {', '.join(bad[:5])} are not.")
        return tuple(int(p) for p in parts)

    def clean(self):
        data = super().clean()
        since, until = data.get("decided_from"), data.get("decided_until")
        if since and until and since > until:
            self.add_error("decided_until", "The end date is before the start date.")
        version, projects = data.get("rubric_version"), data.get("projects")
        if version is not None and projects is not None and version.rubric.project_id not in {p.pk for p in projects}:
            self.add_error("rubric_version", f"{version} belongs to another project: tick its project too.")
        return data

    def filters(self) -> SnapshotFilters:
        data = self.cleaned_data
        return SnapshotFilters(
            include_llm_judged=data.get("include_llm_judged", False),
            adjudicated_only=data.get("adjudicated_only", False),
            min_agreement=data.get("min_agreement"),
            provenances=tuple(data.get("provenances") or ()),
            kinds=tuple(data.get("kinds") or ()),
            decided_from=data.get("decided_from"),
            decided_until=data.get("decided_until"),
            rubric_version=data["rubric_version"].pk if data.get("rubric_version") else None,
            rubric_min=1.0 if data.get("rubric_min") is None else data["rubric_min"],
            exclude_findings=tuple((self.audit.pk, key) for key in data.get("exclude_findings") or ()),
            exclude_items=data.get("exclude_items") or (),
            exclude_contaminated_by=self.check.pk if data.get("exclude_contaminated") else None,
        )


def _config_field(f: dataclasses.Field) -> forms.Field:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    help_text = f.metadata["help"]
    if f.name in CHOICES:
        return forms.ChoiceField(choices=[(c, c) for c in CHOICES[f.name]], initial=default, help_text=help_text)
    if isinstance(default, bool):
        return forms.BooleanField(required=False, initial=default, help_text=help_text)
    if isinstance(default, int):
        return forms.IntegerField(initial=default, help_text=help_text)
    if isinstance(default, float):
        return forms.FloatField(initial=default, help_text=help_text)
    if isinstance(default, list):
        return forms.CharField(initial=", ".join(default), help_text=help_text + " (comma-separated)")
    return forms.CharField(initial=default, help_text=help_text)


class JobForm(forms.Form):
    snapshot = forms.ModelChoiceField(queryset=TrainingSnapshot.objects.all())
    base_model = forms.CharField(
        max_length=500, help_text="A local directory (config.json, weights, tokenizer) or a hub id."
    )
    method = forms.ChoiceField(choices=TrainingJob.Method.choices, initial="sft")

    CONFIG_FIELDS = [f for f in dataclasses.fields(TrainingConfig) if f.name != "method"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for f in self.CONFIG_FIELDS:
            self.fields[f.name] = _config_field(f)

    def clean_batch_size(self) -> int | str:
        value = str(self.cleaned_data["batch_size"]).strip().lower()
        if value == "auto":
            return "auto"
        if value.isdigit() and int(value) > 0:
            return int(value)
        raise forms.ValidationError("Give a positive whole number, or auto to choose from the GPU's free memory.")

    def clean_target_modules(self) -> list[str]:
        return [m.strip() for m in self.cleaned_data["target_modules"].split(",") if m.strip()]

    def config_dict(self) -> dict:
        return {f.name: self.cleaned_data[f.name] for f in self.CONFIG_FIELDS}

    def config_fields(self):
        return [self[f.name] for f in self.CONFIG_FIELDS]
