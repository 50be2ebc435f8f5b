"""Blind comparison queues: runs' responses to eval prompts, judged by people in the review queue.

A comparison is worked in an ordinary annotate project, so it gets the review machinery as it is
(overlap k, leases, keyboard, drafts, undo, agreement, adjudication). Its items carry the prompt and
the responses and nothing else: no model name in a response, no metadata, a neutral project name.
Which run wrote which response is kept in ``ComparisonItem``, which no reviewer page reads. Annotations
store response indices, never screen positions, so a judgement does not depend on the display.
Items are tagged ``model_generated`` and sit in the eval split: never training data (a trigger
refuses them in a snapshot) and never eval data (a freeze refuses them).

Three modes:

- pairwise: a preference item per prompt, the two runs' responses stored in a seeded random order and
  shown in a random order per reviewer.
- reference: a rubric item per prompt that has a reference answer, holding the reference (marked with
  the role ``reference``, the one thing a reviewer is told about a text's origin) and the run's response
  in a seeded random order; the queue's rubric is one nominal criterion, better / as good / worse / wrong,
  so the payload names the response judged (``response_index``) and the verdict.
- rubric: a rubric item per prompt holding the run's response, scored under the eval set project's active
  (signed-off) rubric version. The review machinery looks a rubric up in the item's own project, so the
  queue's project gets that version's criteria under the same name and number, fixed when the queue is
  made: scoring stays under one version even if the eval set's project activates a newer one later.
"""

from __future__ import annotations

import hashlib
import random
import secrets

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from annotate import selectors as annotate_selectors
from annotate.models import Item, Provenance, Rubric, RubricVersion, Split, TaskKind
from annotate.services.projects import project_add_members, project_create
from annotate.services.rubrics import criteria_validate
from evalsets.judging.models import Comparison, ComparisonItem, GenerationOutput, GenerationRun
from evalsets.judging.services.runs import eval_prompts
from evalsets.models import EvalRecord

Mode = Comparison.Mode

GUIDELINES = {
    Mode.PAIRWISE: (
        "Each item is a request and two responses to it. Pick the response that serves the person better: "
        "correct, complete, following the request and the policy. Choose Tie when they are equally good, and "
        "Both bad when neither is acceptable. Judge the text alone."
    ),
    Mode.REFERENCE: (
        "Each item is a request, a reference answer that reviewers wrote and agreed on, and a response. Judge the "
        "response against the reference: Better, As good, Worse (acceptable but short of the reference), or Wrong "
        "(incorrect, against the policy, or not an answer). Judge the text alone."
    ),
    Mode.RUBRIC: (
        "Each item is a request and one response to it. Score the response on every criterion of the rubric, "
        "as its levels describe. Judge the text alone."
    ),
}
# What reviewers see of the queue: a random code after these words, nothing about the runs.
QUEUE_NAMES = {
    Mode.PAIRWISE: ("Blind comparison", "compare"),
    Mode.REFERENCE: ("Blind reference check", "reference"),
    Mode.RUBRIC: ("Blind rubric scoring", "score"),
}
TASK_KINDS = {Mode.PAIRWISE: TaskKind.PREFERENCE, Mode.REFERENCE: TaskKind.RUBRIC, Mode.RUBRIC: TaskKind.RUBRIC}

REFERENCE_RUBRIC = "Against the reference answer"
VERDICT_KEY = "verdict"
REFERENCE_CRITERIA = [
    {
        "key": VERDICT_KEY,
        "name": "Compared with the reference answer, the response is",
        "scale": "nominal",
        "levels": [
            {
                "value": "better",
                "label": "Better",
                "description": "More correct, complete or helpful than the reference.",
            },
            {"value": "as_good", "label": "As good", "description": "As correct and complete as the reference."},
            {
                "value": "worse",
                "label": "Worse",
                "description": "Acceptable, but falls short of the reference (less complete, less clear).",
            },
            {
                "value": "wrong",
                "label": "Wrong",
                "description": "Incorrect, against the policy, or not an answer to the request.",
            },
        ],
    }
]
REFERENCE_ROLE = "reference"


def _check_run(field: str, run: GenerationRun) -> None:
    if run.source != GenerationRun.Source.EVAL or run.status != GenerationRun.Status.SUCCEEDED:
        raise ValidationError({field: f"Run {run.pk} is not a finished run on an eval set version."})
    if run.output_count != run.prompt_count:
        raise ValidationError({field: f"Run {run.pk} answered {run.output_count} of {run.prompt_count} prompts."})


def _check_runs(mode: str, run_a: GenerationRun, run_b: GenerationRun | None) -> None:
    if mode not in Mode.values:
        raise ValidationError({"mode": f"Choose one of {', '.join(Mode.values)} (got {mode!r})."})
    if mode == Mode.PAIRWISE and run_b is None:
        raise ValidationError({"run_b": "A pairwise comparison needs a second run (the challenger)."})
    if mode != Mode.PAIRWISE and run_b is not None:
        raise ValidationError({"run_b": "Reference and rubric modes judge one run: leave the second run empty."})
    if run_b is not None and run_a.pk == run_b.pk:
        raise ValidationError({"run_b": "Choose two different runs."})
    _check_run("run_a", run_a)
    if run_b is not None:
        _check_run("run_b", run_b)
        if run_a.evalset_version_id != run_b.evalset_version_id:
            raise ValidationError(
                {"run_b": "The two runs answered different eval set versions: compare runs on the same version."}
            )


def _queue_rubric(mode: str, project, source_project, created_by) -> tuple[RubricVersion | None, RubricVersion | None]:
    """The rubric version the queue's reviewers score under (None for pairwise), active in the queue's project;
    and for rubric mode, the eval set project's version it carries."""
    source = None
    if mode == Mode.PAIRWISE:
        return None, None
    if mode == Mode.REFERENCE:
        name, number, criteria = REFERENCE_RUBRIC, 1, criteria_validate(REFERENCE_CRITERIA)
        notes = "The reference-mode verdict: how the response compares with the reference answer."
    else:
        source = annotate_selectors.rubric_version_active(project=source_project)
        if source is None:
            raise ValidationError(
                {
                    "mode": f"Project {source_project.name} has no active rubric version: propose one and collect "
                    "its sign-offs before scoring runs under it."
                }
            )
        name, number, criteria = source.rubric.name, source.number, source.criteria
        notes = f"Rubric version {source.pk} of the eval set's project, as signed off there."
    rubric = Rubric(project=project, name=name)
    rubric.full_clean()
    rubric.save()
    version = RubricVersion(
        rubric=rubric,
        number=number,
        criteria=criteria,  # the signed-off criteria verbatim
        notes=notes,
        status=RubricVersion.Status.ACTIVE,
        created_by=created_by,
        proposed_at=timezone.now(),
        activated_at=timezone.now(),
    )
    version.full_clean()
    version.save()
    return version, source


@transaction.atomic
def comparison_create(
    *,
    name: str,
    run_a: GenerationRun,
    run_b: GenerationRun | None = None,
    reviewers,
    overlap_k: int,
    seed: int,
    created_by,
    mode: str = Mode.PAIRWISE,
) -> Comparison:
    """A blind queue for ``reviewers`` over the eval prompts: two runs side by side (pairwise), one run against the
    reference answers (reference), or one run's responses scored under the project's active rubric (rubric)."""
    run_a = GenerationRun.objects.select_related("evalset_version__project").get(pk=run_a.pk)
    run_b = None if run_b is None else GenerationRun.objects.select_related("evalset_version").get(pk=run_b.pk)
    _check_runs(mode, run_a, run_b)
    if not name.strip():
        raise ValidationError({"name": "Name the comparison (reviewers never see this name)."})
    version = run_a.evalset_version
    records = {r.pk: r for r in EvalRecord.objects.filter(version=version)}
    prompts = eval_prompts(version)
    if mode == Mode.REFERENCE:
        prompts = [p for p in prompts if records[p["record_id"]].reference.strip()]
        if not prompts:
            raise ValidationError(
                {
                    "mode": f"Eval set version {version.name} has no record with a reference answer: reference mode "
                    "needs gold-answer records. Compare two runs or score them under the rubric instead."
                }
            )
    code = secrets.token_hex(4)
    title, prefix = QUEUE_NAMES[mode]
    project = project_create(
        name=f"{title} {code}",
        slug=f"{prefix}-{code}",
        task_kinds=[TASK_KINDS[mode]],
        created_by=created_by,
        guidelines=GUIDELINES[mode],
        overlap_k=overlap_k,
        eval_share=1,
    )
    project_add_members(project=project, users=list(reviewers))
    queue_version, source_version = _queue_rubric(mode, project, version.project, created_by)
    comparison = Comparison(
        name=name.strip(),
        mode=mode,
        run_a=run_a,
        run_b=run_b,
        rubric_version=source_version,
        project=project,
        seed=seed,
        created_by=created_by,
    )
    comparison.full_clean()
    comparison.save()
    outputs_a = {o.record_id: o for o in GenerationOutput.objects.filter(run=run_a)}
    outputs_b = {o.record_id: o for o in GenerationOutput.objects.filter(run=run_b)} if run_b else {}
    links = []
    for prompt in prompts:
        record = records[prompt["record_id"]]
        a, b = outputs_a[record.pk], outputs_b.get(record.pk)
        a_index = random.Random(f"{seed}:{record.pk}").randrange(2)
        other = None
        if mode == Mode.PAIRWISE:
            other = {"text": b.text, "model": ""}
        elif mode == Mode.REFERENCE:
            other = {"text": record.reference, "model": "", "role": REFERENCE_ROLE}
        else:
            a_index = 0
        response = {"text": a.text, "model": ""}
        if other is None:
            responses = [response]
        else:
            responses = [response, other] if a_index == 0 else [other, response]
        item = Item(
            project=project,
            kind=TASK_KINDS[mode],
            prompt=record.prompt,
            messages=prompt["messages"] if record.messages else None,
            responses=responses,
            rubric_response=a_index if queue_version is not None else 0,
            metadata={},
            provenance=Provenance.MODEL_GENERATED,
            split=Split.EVAL,
            content_hash=hashlib.sha256(f"comparison:{comparison.pk}:{record.pk}".encode()).hexdigest(),
        )
        item.full_clean()
        item.save()
        links.append(
            ComparisonItem(
                comparison=comparison, item=item, record_id=record.pk, output_a=a, output_b=b, a_index=a_index
            )
        )
    ComparisonItem.objects.bulk_create(links)
    return comparison
