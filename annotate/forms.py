"""Forms: input validated where it enters, into typed values the services take.

The task forms (one per task kind) turn what a reviewer submitted on a task screen, where responses
are named by the position they were shown in (1, 2, ...), into a payload of ``annotate.payloads``,
where they are named by their index into ``Item.responses``. They also give the task screen its values
and errors, so a card shows exactly what the form would accept.
"""

from collections import defaultdict

from django import forms
from django.core.exceptions import ValidationError

from annotate.audit import DEFAULT_GATES, gates_validate
from annotate.importers import MAX_FIELD_CHARS, MAX_LINE_BYTES, guess_format
from annotate.models import (
    IMPORTABLE_PROVENANCES,
    ImportBatch,
    Item,
    ItemResult,
    Project,
    Provenance,
    RubricVersion,
    TaskKind,
)
from annotate.payloads import (
    ANSWER_ACTIONS,
    SOURCE_ACTIONS,
    GoldAction,
    GoldPayload,
    Payload,
    PreferenceChoice,
    PreferencePayload,
    RubricPayload,
    Strength,
)
from annotate.services.projects import PROJECT_SETTINGS

MAX_ANSWER_CHARS = 50_000
MAX_NOTE_CHARS = 2_000


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
        choices=IMPORTABLE_PROVENANCES,
        initial=Provenance.HUMAN,
        help_text="Where the rows come from, unless a row says otherwise in its provenance field.",
    )

    def clean(self):
        data = super().clean()
        upload = data.get("file")
        if upload and not data.get("file_format"):
            try:
                data["file_format"] = guess_format(upload.name)
            except ValueError as exc:
                self.add_error("file_format", str(exc))
        return data


class ItemFilterForm(forms.Form):
    q = forms.CharField(
        required=False,
        max_length=200,
        strip=True,
        widget=forms.TextInput(
            attrs={"type": "search", "placeholder": "Search the prompts, or #id", "aria-label": "Search"}
        ),
    )
    split = forms.ChoiceField(
        choices=[("", "All splits"), ("train", "Train"), ("eval", "Eval")],
        required=False,
        widget=forms.Select(attrs={"aria-label": "Split"}),
    )
    kind = forms.ChoiceField(
        choices=[("", "All kinds"), ("gold", "Gold answer"), ("preference", "Preference pair"), ("rubric", "Rubric")],
        required=False,
        widget=forms.Select(attrs={"aria-label": "Kind"}),
    )


# --- Task screens ----------------------------------------------------------------------------------------


class _SharedCharField(forms.CharField):
    """A task form field that every form instance shares rather than deep-copies.

    Django copies each declared field into every new form so that one form may change its own; the task
    forms never change theirs (they render their own markup, not the widgets), and the copies were a
    measurable share of a queue request's CPU."""

    def __deepcopy__(self, memo):
        return self


class TaskForm(forms.Form):
    """A reviewer's answer to one item as they saw it; ``payload`` holds it in display-independent terms."""

    duration_ms = _SharedCharField(required=False)

    def __init__(
        self,
        data=None,
        *,
        item: Item,
        display_order: list[int],
        rubric_version: RubricVersion | None = None,
        payload: Payload | dict | None = None,
    ):
        responses = item.responses or []
        self.item = item
        # A lease made before the item's responses changed shows them in stored order.
        self.display_order = display_order if len(display_order) == len(responses) else list(range(len(responses)))
        self.rubric_version = rubric_version
        self.payload: Payload | None = None
        initial = self.values_for(payload if isinstance(payload, dict) or payload is None else payload.to_json())
        super().__init__(data, initial=initial)

    # Display positions (1-based, as the reviewer saw them) <-> indices into Item.responses.
    def index_of(self, field: str) -> int | None:
        value = self.cleaned_data.get(field) if hasattr(self, "cleaned_data") else None
        try:
            position = int(value)
        except (TypeError, ValueError):
            position = 0
        if not 1 <= position <= len(self.display_order):
            self.add_error(field, f"Choose a response between 1 and {len(self.display_order)} (got {value!r}).")
            return None
        return self.display_order[position - 1]

    def position_of(self, index) -> str:
        try:
            return str(self.display_order.index(index) + 1)
        except ValueError:
            return ""

    def values_for(self, payload: dict | None) -> dict[str, str]:
        """The form values that reproduce a stored payload (for undo and for editing a revision)."""
        return {}

    def clean_duration_ms(self) -> int | None:
        # Measured by the browser; when it is missing or garbled the lease's age stands in (services).
        try:
            value = int(self.cleaned_data.get("duration_ms") or "")
        except ValueError:
            return None
        return value if value >= 0 else None

    def clean(self):
        data = super().clean()
        if not self.errors:
            self.payload = self.build_payload(data)
        return data

    def build_payload(self, data: dict) -> Payload | None:
        raise NotImplementedError

    @property
    def values(self) -> defaultdict:
        """Values to show on the card: what was submitted, else what the payload said; missing ones read as ""."""
        source = self.data if self.is_bound else self.initial
        return defaultdict(str, {k: v for k, v in source.items() if isinstance(v, str)})

    @property
    def field_errors(self) -> defaultdict:
        if not self.is_bound:
            return defaultdict(str)
        return defaultdict(str, {k: " ".join(v) for k, v in self.errors.items() if k != "__all__"})

    @property
    def general_errors(self) -> list[str]:
        return list(self.non_field_errors()) if self.is_bound else []


def _text_field(limit: int) -> forms.CharField:
    return _SharedCharField(
        required=False,
        strip=False,
        max_length=limit,
        error_messages={"max_length": "Keep it under %(limit_value)d characters (it has %(show_value)d)."},
    )


class GoldForm(TaskForm):
    action = _SharedCharField(required=False)
    source = _SharedCharField(required=False)
    answer = _text_field(MAX_ANSWER_CHARS)
    reason = _text_field(MAX_NOTE_CHARS)

    def values_for(self, payload):
        if not payload:
            return {}
        return {
            "action": payload.get("action", ""),
            "source": self.position_of(payload.get("source_index")),
            "answer": payload.get("answer", ""),
            "reason": payload.get("reason", ""),
        }

    def build_payload(self, data):
        action = data.get("action") or ""
        if action not in GoldAction.values:
            self.add_error(
                "action",
                "Choose what to do: accept a candidate (its number), edit one (e), write your own (w) "
                "or mark the item unusable (x).",
            )
            return None
        source_index = self.index_of("source") if action in SOURCE_ACTIONS else None
        answer, reason = "", ""
        if action == GoldAction.ACCEPT and source_index is not None:
            answer = (self.item.responses or [])[source_index].get("text", "")
        if action in ANSWER_ACTIONS:
            answer = data.get("answer") or ""
            if not answer.strip():
                self.add_error("answer", "Write the reference answer: it is empty.")
        if action == GoldAction.UNUSABLE:
            reason = data.get("reason") or ""
            if not reason.strip():
                self.add_error("reason", "Say why the item is unusable (for example: the prompt is cut off).")
        if self.errors:
            return None
        return GoldPayload(action=action, answer=answer, source_index=source_index, reason=reason)


class PreferenceForm(TaskForm):
    choice = _SharedCharField(required=False)
    worst = _SharedCharField(required=False)
    strength = _SharedCharField(required=False)
    rationale = _text_field(MAX_NOTE_CHARS)

    def values_for(self, payload):
        if not payload:
            return {}
        choice = payload.get("choice", "")
        return {
            "choice": self.position_of(payload.get("chosen")) if choice == PreferenceChoice.RESPONSE else choice,
            "worst": self.position_of(payload.get("rejected")),
            "strength": payload.get("strength") or "",
            "rationale": payload.get("rationale", ""),
        }

    def build_payload(self, data):
        choice = data.get("choice") or ""
        rationale = data.get("rationale") or ""
        if choice in (PreferenceChoice.TIE, PreferenceChoice.BOTH_BAD):
            return PreferencePayload(choice=choice, rationale=rationale)
        if not choice:
            self.add_error("choice", "Pick the better response (its number), t for a tie, or b if both are bad.")
            return None
        chosen = self.index_of("choice")
        rejected = None
        if len(self.item.responses or []) == 2 and chosen is not None:
            rejected = 1 - chosen
        elif data.get("worst"):
            rejected = self.index_of("worst")
            if rejected is not None and rejected == chosen:
                self.add_error("worst", "The worst response cannot also be the best one: pick another.")
        strength = data.get("strength") or None
        if strength not in (None, *Strength.values):
            self.add_error("strength", f"Strength is slight or clear, or left empty (got {strength!r}).")
        if self.errors:
            return None
        return PreferencePayload(
            choice=PreferenceChoice.RESPONSE, chosen=chosen, rejected=rejected, strength=strength, rationale=rationale
        )


_SCORE_FIELD = _SharedCharField(required=False)


class RubricForm(TaskForm):
    """Scores of the item's scored response (``Item.rubric_response``), whatever order the screen showed."""

    def __init__(self, *args, rubric_version: RubricVersion | None = None, **kwargs):
        self.criteria = rubric_version.criteria if rubric_version is not None else []
        super().__init__(*args, rubric_version=rubric_version, **kwargs)
        for criterion in self.criteria:
            self.fields[f"score-{criterion['key']}"] = _SCORE_FIELD

    def values_for(self, payload):
        if not payload:
            return {}
        return {f"score-{key}": str(value) for key, value in (payload.get("scores") or {}).items()}

    def build_payload(self, data):
        if self.rubric_version is None:
            raise ValidationError("This project has no active rubric version: an admin has to activate one first.")
        scores = {}
        for criterion in self.criteria:
            key = criterion["key"]
            name = criterion.get("name", key)
            raw = data.get(f"score-{key}")
            levels = {str(level["value"]): level["value"] for level in criterion.get("levels", [])}
            if raw in (None, ""):
                self.add_error(f"score-{key}", f"Score {name}: pick one of its levels.")
            elif raw not in levels:
                self.add_error(f"score-{key}", f"{raw!r} is not a level of {name}: pick one of {', '.join(levels)}.")
            else:
                scores[key] = levels[raw]
        if self.errors:
            return None
        return RubricPayload(response_index=self.item.scored_response_index, scores=scores)


TASK_FORMS: dict[str, type[TaskForm]] = {
    TaskKind.GOLD: GoldForm,
    TaskKind.PREFERENCE: PreferenceForm,
    TaskKind.RUBRIC: RubricForm,
}


def task_form(item: Item, data=None, **kwargs) -> TaskForm:
    """The task form for the item's kind."""
    try:
        form_class = TASK_FORMS[item.kind]
    except KeyError:
        raise ValidationError(f"Item {item.pk} has an unknown kind {item.kind!r}.") from None
    return form_class(data, item=item, **kwargs)


# --- Projects, members, API tokens, exports ---------------------------------------------------------------


class ProjectSettingsForm(forms.ModelForm):
    """A project's settings, as an admin changes them in the app."""

    task_kinds = forms.MultipleChoiceField(choices=TaskKind.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = Project
        fields = list(PROJECT_SETTINGS)
        help_texts = {
            "audit_gates": "What each audit finding does to a snapshot of this project, as JSON: "
            '{"recurring_closing": {"action": "block", "min_share": 0.05}}. Actions: off, warn, block; '
            "min_share: the share of examples from which it applies. Types not named keep their defaults: "
            + ", ".join(f"{kind} ({gate['action']})" for kind, gate in DEFAULT_GATES.items())
            + ".",
        }

    def clean_audit_gates(self):
        try:
            return gates_validate(self.cleaned_data.get("audit_gates") or {})
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from None


class ProjectCreateForm(ProjectSettingsForm):
    """A new project: its settings plus what is fixed once items exist (slug, eval share, the split's seed)."""

    class Meta(ProjectSettingsForm.Meta):
        fields = [
            "name",
            "slug",
            *[f for f in ProjectSettingsForm.Meta.fields if f != "name"],
            "eval_share",
            "split_seed",
        ]


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(
        choices=[("", "Keep their role"), ("reviewer", "Reviewer"), ("adjudicator", "Adjudicator")],
        required=False,
        help_text="Roles are site-wide: this changes the person's role in every project.",
    )


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What it is for, e.g. 'distillation pipeline'.")
    scope = forms.ChoiceField(
        choices=[("read", "Read"), ("write", "Read and write (review, submit)"), ("admin", "Admin (import, manage)")],
        initial="read",
    )
    expires_on = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), help_text="Empty: it never expires."
    )


class AnnotationExportForm(forms.Form):
    kind = forms.MultipleChoiceField(choices=TaskKind.choices, required=False)
    state = forms.MultipleChoiceField(
        choices=[("unreviewed", "Unreviewed"), *ItemResult.Status.choices], required=False
    )
    split = forms.MultipleChoiceField(choices=[("train", "Train"), ("eval", "Eval")], required=False)
    since = forms.DateTimeField(required=False, help_text="Items whose result changed from this time on.")
    until = forms.DateTimeField(required=False)
