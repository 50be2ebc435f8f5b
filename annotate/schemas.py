"""Pydantic schemas of the annotate API (``annotate/api.py``): what comes in is parsed here, what goes out is
shaped here. Choices come from the models and ``annotate.payloads``, written once."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from ninja import Schema
from pydantic import Field, field_validator

from annotate.models import IMPORTABLE_PROVENANCES, ConsensusRule, ImportBatch, ItemResult, Provenance, Split, TaskKind
from annotate.payloads import GoldAction, Strength

TaskKindName = Literal[tuple(TaskKind.values)]  # type: ignore[valid-type]
ProvenanceName = Literal[tuple(value for value, _ in IMPORTABLE_PROVENANCES)]  # type: ignore[valid-type]
SplitName = Literal[tuple(Split.values)]  # type: ignore[valid-type]
ConsensusRuleName = Literal[tuple(ConsensusRule.values)]  # type: ignore[valid-type]
ImportModeName = Literal[tuple(ImportBatch.Mode.values)]  # type: ignore[valid-type]
ImportFormatName = Literal["jsonl", "csv"]
# An item's state: its result's status, or "unreviewed" while nobody has submitted a review of it.
ItemStateName = Literal[("unreviewed", *ItemResult.Status.values)]  # type: ignore[valid-type]
MemberRoleName = Literal["reviewer", "adjudicator"]
GoldActionName = Literal[tuple(GoldAction.values)]  # type: ignore[valid-type]
StrengthName = Literal[tuple(Strength.values)]  # type: ignore[valid-type]

Slug = Field(pattern=r"^[-a-zA-Z0-9_]+$", min_length=1, max_length=100)


class Me(Schema):
    username: str
    roles: list[str]
    scope: str = Field(description="The credential's scope: the token's, or admin for a signed-in session.")


# --- projects ---------------------------------------------------------------------------------------------


class ProjectOut(Schema):
    id: int
    slug: str
    name: str
    description: str
    guidelines: str
    task_kinds: list[str]
    overlap_k: int
    eval_share: float
    split_seed: int
    lease_minutes: int
    consensus_rule: str
    score_tolerance: float
    rubric_signoffs_required: int
    calibration_required: bool
    calibration_threshold: float
    reviewers_see_evalsets: bool
    created_at: datetime


class ProjectPage(Schema):
    items: list[ProjectOut]
    next_cursor: str | None = None


class _ProjectSettings(Schema):
    description: str | None = Field(default=None, max_length=20_000)
    guidelines: str | None = Field(default=None, max_length=100_000)
    overlap_k: int | None = Field(default=None, ge=1, le=50)
    lease_minutes: int | None = Field(default=None, ge=1, le=7 * 24 * 60)
    consensus_rule: ConsensusRuleName | None = None
    score_tolerance: float | None = Field(default=None, ge=0, le=1000)
    rubric_signoffs_required: int | None = Field(default=None, ge=0, le=100)
    calibration_required: bool | None = None
    calibration_threshold: float | None = Field(default=None, ge=-1, le=1)
    reviewers_see_evalsets: bool | None = None


class ProjectCreate(_ProjectSettings):
    name: str = Field(min_length=1, max_length=200)
    slug: str = Slug
    task_kinds: list[TaskKindName] = Field(min_length=1)
    eval_share: Decimal | None = Field(default=None, ge=0, le=1, max_digits=4, decimal_places=3)
    split_seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)


class ProjectUpdate(_ProjectSettings):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    task_kinds: list[TaskKindName] | None = Field(default=None, min_length=1)


class MemberOut(Schema):
    username: str
    roles: list[str]


class MemberSet(Schema):
    role: MemberRoleName | None = Field(
        default=None, description="Their reviewing role, site-wide; leave out to only add them to the project."
    )


class MemberRemoved(Schema):
    username: str
    leases_ended: int


# --- items and imports ------------------------------------------------------------------------------------


class ItemOut(Schema):
    id: int
    kind: str
    split: str
    provenance: str
    prompt: str
    response_count: int
    created_at: datetime
    # Admins and adjudicators only (null for reviewers, whose item page does not show them either).
    state: str | None = None
    messages: list[dict[str, Any]] | None = None
    responses: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] | None = None
    review_count: int | None = None
    import_batch_id: int | None = None
    source_line: int | None = None


class ItemPage(Schema):
    items: list[ItemOut]
    next_cursor: str | None = None


class ImportOptions(Schema):
    file_format: ImportFormatName | None = Field(default=None, description="Default: from the file name.")
    mode: ImportModeName = ImportBatch.Mode.ALL_OR_NOTHING
    provenance: ProvenanceName = Provenance.HUMAN


class RowError(Schema):
    line: int | None = None
    field: str = ""
    message: str


class DuplicateRow(Schema):
    line: int | None = None
    message: str


class ImportOut(Schema):
    id: int
    status: str
    filename: str
    file_format: str
    mode: str
    provenance: str
    bytes_total: int
    bytes_read: int
    rows_seen: int
    rows_imported: int
    rows_rejected: int
    duplicates: int
    message: str
    errors: list[RowError] = Field(description="The first errors; errors_url lists every one.")
    duplicate_rows: list[DuplicateRow]
    created_at: datetime
    finished_at: datetime | None
    status_url: str
    errors_url: str


class ImportPage(Schema):
    items: list[ImportOut]
    next_cursor: str | None = None


# --- queue ------------------------------------------------------------------------------------------------


class Turn(Schema):
    role: str
    content: str


class ShownResponse(Schema):
    position: int = Field(description="Where this reviewer sees it (1, 2, ...); submissions name positions.")
    text: str


class Level(Schema):
    value: Any
    label: str = ""
    description: str = ""
    example: str = ""


class Criterion(Schema):
    key: str
    name: str
    scale: str = ""
    levels: list[Level]


class TaskRubric(Schema):
    version_id: int
    criteria: list[Criterion]


class Task(Schema):
    """One item as this reviewer sees it: blind (no model label, no response index, nobody else's judgement)."""

    lease_id: int
    item_id: int
    kind: str
    prompt: str
    messages: list[Turn] | None
    responses: list[ShownResponse]
    scored_position: int | None = Field(description="Rubric items: the position of the response to score.")
    rubric: TaskRubric | None
    expires_at: datetime
    submit_url: str
    skip_url: str


class QueueOut(Schema):
    task: Task | None
    detail: str = ""


class Answer(Schema):
    """A reviewer's answer, naming responses by the position they were shown in (1, 2, ...).

    Gold: ``action`` (accept, edit, write, unusable), ``source`` for accept/edit, ``answer`` for edit/write,
    ``reason`` for unusable. Preference: ``choice`` (a position, tie or both_bad), ``worst`` (with 3+
    responses), ``strength``, ``rationale``. Rubric: ``scores`` by criterion key."""

    action: GoldActionName | None = None
    source: int | None = Field(default=None, ge=1, le=1000)
    answer: str | None = None
    reason: str | None = None
    choice: str | None = Field(default=None, max_length=20)
    worst: int | None = Field(default=None, ge=1, le=1000)
    strength: StrengthName | None = None
    rationale: str | None = None
    scores: dict[str, str | int | float] | None = None
    duration_ms: int | None = Field(default=None, ge=0, le=10**9)

    @field_validator("choice", mode="before")
    @classmethod
    def _choice_text(cls, value):
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class Submitted(Schema):
    item_id: int
    revision: int
    next: Task | None = None
    detail: str = ""


class Skipped(Schema):
    lease_id: int
    next: Task | None = None
    detail: str = ""


# --- reports and rubrics ----------------------------------------------------------------------------------


class ReportOut(Schema):
    status: str = Field(description="none (not made for the data as it is now), queued, running, succeeded, failed.")
    progress: float
    message: str
    rubric_version_id: int | None
    created_at: datetime | None
    result: dict[str, Any] | None
    status_url: str


class RubricVersionOut(Schema):
    id: int
    number: int
    status: str
    criteria: list[dict[str, Any]]
    notes: str
    signoffs: int
    created_at: datetime
    proposed_at: datetime | None
    activated_at: datetime | None


class RubricOut(Schema):
    id: int
    name: str
    versions: list[RubricVersionOut]
