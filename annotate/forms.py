from django import forms

from annotate.importers import MAX_FIELD_CHARS, MAX_LINE_BYTES
from annotate.models import ImportBatch, Provenance


class ImportForm(forms.Form):
    file = forms.FileField(
        help_text=(
            f"JSONL or CSV, UTF-8. At most {MAX_FIELD_CHARS:,} characters per text field "
            f"and {MAX_LINE_BYTES // (1024 * 1024)} MB per row."
        )
    )
    file_format = forms.ChoiceField(
        label="Format",
        choices=[("", "From the file name (.jsonl / .csv)"), ("jsonl", "JSONL"), ("csv", "CSV")],
        required=False,
    )
    mode = forms.ChoiceField(
        choices=ImportBatch.Mode.choices, initial=ImportBatch.Mode.ALL_OR_NOTHING, widget=forms.RadioSelect
    )
    provenance = forms.ChoiceField(
        choices=Provenance.choices,
        initial=Provenance.HUMAN,
        help_text="Where the rows come from, unless a row says otherwise in its provenance field.",
    )

    def clean(self):
        data = super().clean()
        upload = data.get("file")
        if upload and not data.get("file_format"):
            from annotate.importers import guess_format

            try:
                data["file_format"] = guess_format(upload.name)
            except ValueError as exc:
                self.add_error("file_format", str(exc))
        return data


class ItemFilterForm(forms.Form):
    split = forms.ChoiceField(choices=[("", "All splits"), ("train", "Train"), ("eval", "Eval")], required=False)
    kind = forms.ChoiceField(
        choices=[("", "All kinds"), ("gold", "Gold answer"), ("preference", "Preference pair"), ("rubric", "Rubric")],
        required=False,
    )
