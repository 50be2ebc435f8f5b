"""Blind comparison queues: two runs' responses to the same eval prompts, judged in the review queue.

A comparison is worked in an ordinary preference project, so it gets the review machinery as it is
(overlap k, leases, keyboard, drafts, undo, agreement, adjudication). Its items carry the prompt and
the two responses and nothing else: no model name in a response, no metadata, a neutral project name.
Which run wrote which response is kept in ``ComparisonItem``, which no reviewer page reads. The two
responses are stored in a seeded random order per item, and the queue shows them in a random order
per reviewer; annotations store response indices, so a judgement does not depend on the display.
Items are tagged ``model_generated`` and sit in the eval split: never training data (a trigger
refuses them in a snapshot) and never eval data (a freeze refuses them).
"""

from __future__ import annotations

import hashlib
import random
import secrets

from django.core.exceptions import ValidationError
from django.db import transaction

from annotate.models import Item, Provenance, Split, TaskKind
from annotate.services.projects import project_add_members, project_create
from evalsets.judging.models import Comparison, ComparisonItem, GenerationOutput, GenerationRun
from evalsets.judging.services.runs import eval_prompts
from evalsets.models import EvalRecord

GUIDELINES = (
    "Each item is a request and two responses to it. Pick the response that serves the person better: "
    "correct, complete, following the request and the policy. Choose Tie when they are equally good, and "
    "Both bad when neither is acceptable. Judge the text alone."
)


def _check_runs(run_a: GenerationRun, run_b: GenerationRun) -> None:
    if run_a.pk == run_b.pk:
        raise ValidationError({"run_b": "Choose two different runs."})
    for field, run in (("run_a", run_a), ("run_b", run_b)):
        if run.source != GenerationRun.Source.EVAL or run.status != GenerationRun.Status.SUCCEEDED:
            raise ValidationError({field: f"Run {run.pk} is not a finished run on an eval set version."})
        if run.output_count != run.prompt_count:
            raise ValidationError({field: f"Run {run.pk} answered {run.output_count} of {run.prompt_count} prompts."})
    if run_a.evalset_version_id != run_b.evalset_version_id:
        raise ValidationError(
            {"run_b": "The two runs answered different eval set versions: compare runs on the same version."}
        )


@transaction.atomic
def comparison_create(
    *, name: str, run_a: GenerationRun, run_b: GenerationRun, reviewers, overlap_k: int, seed: int, created_by
) -> Comparison:
    """A blind preference queue over the eval prompts both runs answered, for ``reviewers``."""
    run_a, run_b = (GenerationRun.objects.select_related("evalset_version").get(pk=r.pk) for r in (run_a, run_b))
    _check_runs(run_a, run_b)
    if not name.strip():
        raise ValidationError({"name": "Name the comparison (reviewers never see this name)."})
    # The queue's name and address say nothing about the runs: a random code.
    code = secrets.token_hex(4)
    project = project_create(
        name=f"Blind comparison {code}",
        slug=f"compare-{code}",
        task_kinds=[TaskKind.PREFERENCE],
        created_by=created_by,
        guidelines=GUIDELINES,
        overlap_k=overlap_k,
        eval_share=1,
    )
    project_add_members(project=project, users=list(reviewers))
    comparison = Comparison(
        name=name.strip(), run_a=run_a, run_b=run_b, project=project, seed=seed, created_by=created_by
    )
    comparison.full_clean()
    comparison.save()
    outputs_a = {o.record_id: o for o in GenerationOutput.objects.filter(run=run_a)}
    outputs_b = {o.record_id: o for o in GenerationOutput.objects.filter(run=run_b)}
    records = {r.pk: r for r in EvalRecord.objects.filter(version_id=run_a.evalset_version_id)}
    links = []
    for prompt in eval_prompts(run_a.evalset_version):
        record = records[prompt["record_id"]]
        a, b = outputs_a[record.pk], outputs_b[record.pk]
        a_index = random.Random(f"{seed}:{record.pk}").randrange(2)
        texts = [a.text, b.text] if a_index == 0 else [b.text, a.text]
        item = Item(
            project=project,
            kind=TaskKind.PREFERENCE,
            prompt=record.prompt,
            messages=prompt["messages"] if record.messages else None,
            responses=[{"text": t, "model": ""} for t in texts],
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
