"""Forms parse and validate input; they never write (the services do)."""

from __future__ import annotations

import dataclasses

from django import forms

from annotate.models import Project
from training.config import COMPUTE_DTYPES, QUANT_TYPES, TRI_STATE, TrainingConfig
from training.models import TrainingJob, TrainingSnapshot

CHOICES = {
    "quant_type": QUANT_TYPES,
    "compute_dtype": COMPUTE_DTYPES,
    "gradient_checkpointing": TRI_STATE,
    "liger_kernel": TRI_STATE,
}


class SnapshotForm(forms.Form):
    name = forms.CharField(max_length=200)
    projects = forms.ModelMultipleChoiceField(queryset=Project.objects.all(), widget=forms.CheckboxSelectMultiple)
    include_llm_judged = forms.BooleanField(
        required=False, help_text="Also take items whose provenance is LLM-judged (left out by default)."
    )
    note = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))


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
