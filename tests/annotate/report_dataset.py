"""A project with everything an agreement report reads, built the same way on every run.

Gold, preference (two and three responses, ties, both-bad, left-biased display orders) and rubric
items (two rubric versions with ordinal, interval, binary and nominal criteria), six reviewers who
skip items, revised annotations, check and calibration items, item results, and review dates
spread over nine weeks. A few payloads are off the beaten path (a score sent as "4" or 4.0, an
off-scale or unhashable score, a preference without a choice or with a display order that is not a
list, a gold action nobody knows): the report must treat them exactly as the ORM reader did. (No
preference category here is "response:" followed by something other than digits: the ORM reader
sorted such a label level with "response:0" and broke the tie by set iteration order, which changes
from one process to the next.)
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from django.contrib.auth import get_user_model
from django.db.models import JSONField, Value

from annotate.models import Annotation, AnnotationRevision, ItemResult, RubricVersion
from annotate.services import rubrics
from tests.factories import annotate, gold, make_item, pref, scores

START = dt.datetime(2025, 3, 3, 9, 30, tzinfo=dt.UTC)

V1_CRITERIA = [
    {
        "key": "helpful",
        "name": "Helpfulness",
        "scale": "ordinal",
        "levels": [{"value": v, "label": str(v), "description": f"Level {v}"} for v in range(1, 6)],
    },
    {
        "key": "tone",
        "name": "Tone",
        "scale": "nominal",
        "levels": [{"value": t, "label": t.title(), "description": t} for t in ("friendly", "neutral", "rude")],
    },
]
V2_CRITERIA = [
    {
        "key": "helpful",
        "name": "Helpfulness",
        "scale": "ordinal",
        # Listed out of order on purpose: the report sorts numeric levels.
        "levels": [{"value": v, "label": f"L{v}", "description": f"Level {v}"} for v in (3, 1, 5, 2, 4)],
    },
    {
        "key": "correct",
        "name": "Correctness",
        "scale": "interval",
        "levels": [{"value": v, "label": "", "description": f"{v} of 10"} for v in (0, 2.5, 5, 7.5, 10)],
    },
    {
        "key": "safe",
        "name": "Safe",
        "scale": "binary",
        "levels": [
            {"value": "yes", "label": "Yes", "description": "No harm"},
            {"value": "no", "label": "No", "description": "Harmful"},
        ],
    },
    {
        "key": "format",
        "name": "Format",
        "scale": "nominal",
        "levels": [
            {"value": "prose", "label": "Prose", "description": "Paragraphs"},
            {"value": "list", "label": "List", "description": "Bullets"},
            {"value": "1", "label": "One line", "description": "A single line"},
        ],
    },
]
CORRECT = (0, 2.5, 5, 7.5, 10)


def _version(project, criteria, number_status, creator):
    rubric = project.rubrics.first() or rubrics.rubric_create(project=project, name="Quality")
    version = rubrics.rubric_version_create(rubric=rubric, criteria=criteria, created_by=creator)
    RubricVersion.objects.filter(pk=version.pk).update(status=number_status)
    version.refresh_from_db()
    return version


def _reviewed(annotation: Annotation, day: float) -> None:
    when = START + dt.timedelta(days=day)
    Annotation.objects.filter(pk=annotation.pk).update(updated_at=when, created_at=when)


def _revise(annotation: Annotation, payload: dict, day: float) -> None:
    """A second submission: a new revision row, the annotation updated (PostgreSQL moves the row)."""
    annotation.payload = payload
    annotation.revision = 2
    annotation.save()
    AnnotationRevision.objects.create(annotation=annotation, number=2, payload=payload)
    _reviewed(annotation, day)


def build(project, *, seed: int = 7) -> dict:
    """Fill ``project`` (the conftest one, with alice, bob and carol as members); returns what was made."""
    users = get_user_model()
    reviewers = [users.objects.get(username=n) for n in ("alice", "bob", "carol")]
    for name in ("dave", "erin", "frank"):
        user = users.objects.create_user(username=name, password="pw")
        project.members.add(user)
        reviewers.append(user)
    alice, bob, carol, dave, erin, frank = reviewers
    rng = np.random.default_rng(seed)
    creator = project.created_by
    v1 = _version(project, V1_CRITERIA, RubricVersion.Status.RETIRED, creator)
    v2 = _version(project, V2_CRITERIA, RubricVersion.Status.ACTIVE, creator)
    items = []

    # Rubric items: scored under v1 early on, under v2 later; 1 to 5 reviews each.
    for i in range(36):
        item = make_item(project, "rubric")
        items.append(item)
        truth = int(rng.integers(1, 6))
        old = i < 10
        who = [r for r in reviewers if rng.random() < 0.7] or [alice]
        if i % 9 == 4:
            who = who[:1]  # a single review: not pairable
        for r in who:
            helpful = int(min(5, max(1, truth + rng.integers(-1, 2))))
            if r is carol:
                helpful = 5  # carol gives 5 to everything
            if old:
                payload = scores(helpful=helpful, tone=["friendly", "neutral", "rude"][int(rng.integers(0, 3))])
                a = annotate(item, r, payload, version=v1)
            else:
                payload = scores(
                    helpful=helpful,
                    correct=CORRECT[int(min(4, max(0, truth - 1 + rng.integers(-1, 2))))],
                    safe="yes" if truth > 1 or r is dave else "no",
                    format=["prose", "list", "1"][int(rng.integers(0, 3))],
                )
                a = annotate(item, r, payload, version=v2)
            _reviewed(a, day=i * 1.7 + rng.random())
    # Payloads the form would not send, but the report must read as it always did.
    odd = [
        {"helpful": "4", "correct": 5.0, "safe": "yes", "format": 1},
        {"helpful": 4.0, "correct": "7.5", "safe": "maybe", "format": "list"},
        {"helpful": 7, "correct": [5], "safe": None, "format": "prose"},
        {"helpful": True, "correct": 10, "format": {"x": 1}},
        {"helpful": "2", "correct": "10", "safe": "no", "format": "1"},
    ]
    for j, values in enumerate(odd):
        item = make_item(project, "rubric")
        items.append(item)
        annotate(item, erin, scores(helpful=3, correct=5, safe="yes", format="list"), version=v2)
        a = annotate(item, frank, {"response_index": 0, "scores": values}, version=v2)
        _reviewed(a, day=50 + j)
    item = make_item(project, "rubric")
    items.append(item)
    annotate(item, erin, {"response_index": 0}, version=v2)  # no scores at all
    annotate(item, frank, {"response_index": 0, "scores": {}}, version=v2)

    # Preference items, two responses: alice always picks the left one.
    for i in range(30):
        item = make_item(project, "preference")
        items.append(item)
        order = [0, 1] if i % 2 else [1, 0]
        better = int(rng.integers(0, 2))
        a = annotate(item, alice, pref(chosen=order[0], rejected=order[1]), display_order=order)
        _reviewed(a, day=i * 0.3)
        for r in (bob, dave, erin):
            if rng.random() < 0.25:
                continue
            roll = rng.random()
            if roll < 0.12:
                payload = pref("tie")
            elif roll < 0.2:
                payload = pref("both_bad")
            else:
                chosen = better if rng.random() < 0.8 else 1 - better
                payload = pref(chosen=chosen, rejected=1 - chosen)
            a = annotate(item, r, payload, display_order=order if rng.random() < 0.5 else order[::-1])
            _reviewed(a, day=i * 0.3 + rng.random())
    # Three responses: an intransitive cycle, a consistent item, a "best only" pick.
    cycle = make_item(project, "preference", responses=3)
    annotate(cycle, alice, pref(chosen=0, rejected=1), display_order=[0, 1, 2])
    annotate(cycle, bob, pref(chosen=1, rejected=2), display_order=[2, 1, 0])
    annotate(cycle, carol, pref(chosen=2, rejected=0), display_order=[1, 0, 2])
    consistent = make_item(project, "preference", responses=3)
    annotate(consistent, alice, pref(chosen=2, rejected=0), display_order=[0, 1, 2])
    annotate(consistent, bob, pref(chosen=2, rejected=1), display_order=[0, 1, 2])
    annotate(consistent, dave, pref(chosen=2), display_order=[2, 0, 1])
    four = make_item(project, "preference", responses=4)
    annotate(four, erin, pref(chosen=3, rejected=0), display_order=[3, 2, 1, 0])
    annotate(four, frank, pref("tie"), display_order=[0, 1, 2, 3])
    items += [cycle, consistent, four]
    # Odd preference payloads.
    weird = make_item(project, "preference")
    items.append(weird)
    annotate(weird, bob, pref(chosen="1", rejected=0), display_order=[1, 0])
    annotate(weird, carol, {"choice": "both bad", "chosen": None}, display_order=[0, 1])
    annotate(weird, dave, {"rationale": "no choice"}, display_order=[0, 1])
    annotate(weird, erin, pref(chosen=1, rejected=0), display_order={"not": "a list"})
    annotate(weird, frank, pref(chosen=1, rejected=0), display_order=[1.0, 0])

    # Gold items: edits of similar wording, accepts, writes, the odd unusable.
    for i in range(14):
        item = make_item(project, "gold")
        items.append(item)
        for k, r in enumerate((alice, bob, carol)):
            if i % 5 == 3 and r is carol:
                continue
            roll = rng.random()
            if roll < 0.5:
                payload = gold("edit", [f"Answer number {i}.", f"answer  number {i}!", f"The answer is {i}."][k])
            elif roll < 0.7:
                payload = gold("accept", source_index=int(rng.integers(0, 2)))
            elif roll < 0.9:
                payload = gold("write", f"Written answer {i} by reviewer {k}.")
            else:
                payload = gold("unusable")
            a = annotate(item, r, payload)
            _reviewed(a, day=20 + i)
    odd_gold = make_item(project, "gold")
    items.append(odd_gold)
    annotate(odd_gold, alice, {"answer": "no action"})
    annotate(odd_gold, bob, gold("skip"))
    annotate(odd_gold, carol, gold("edit", ""))

    # Revisions: the latest payload and date count.
    revised = Annotation.objects.filter(item__project=project, kind="preference", reviewer=bob).order_by("id")[:4]
    for k, a in enumerate(list(revised)):
        _revise(a, pref("tie") if k % 2 else pref(chosen=0, rejected=1), day=58 + k)
    for a in list(Annotation.objects.filter(item__project=project, kind="rubric", reviewer=dave).order_by("id")[:3]):
        payload = dict(a.payload)
        payload["scores"] = {**payload["scores"], "helpful": 1}
        _revise(a, payload, day=59)

    # Check items with known answers, one of each kind, and one whose answer was never set.
    check_rubric = make_item(project, "rubric", is_check=True, check_answer=scores(helpful=4, correct=7.5, safe="yes"))
    annotate(check_rubric, alice, scores(helpful=4, correct=7.5, safe="yes", format="list"), version=v2)
    annotate(check_rubric, bob, scores(helpful=5, correct=5, safe="yes", format="list"), version=v2)
    annotate(check_rubric, carol, scores(helpful=4, correct=10, safe="no", format="prose"), version=v2)
    check_pref = make_item(project, "preference", is_check=True, check_answer=pref(chosen=1, rejected=0))
    annotate(check_pref, alice, pref(chosen=1, rejected=0), display_order=[1, 0])
    annotate(check_pref, erin, pref(chosen=0, rejected=1), display_order=[0, 1])
    check_gold = make_item(project, "gold", is_check=True, check_answer=gold("edit", "The Answer."))
    annotate(check_gold, bob, gold("edit", "the  answer."))
    annotate(check_gold, frank, gold("write", "Something else"))
    unset = make_item(project, "gold", is_check=True)
    annotate(unset, alice, gold("accept", source_index=0))
    items += [check_rubric, check_pref, check_gold, unset]

    # Calibration items are not data: their annotations stay out of the report.
    calibration = make_item(project, "rubric", is_calibration=True)
    annotate(calibration, alice, scores(helpful=1, correct=0, safe="no", format="list"), version=v2)
    annotate(calibration, bob, scores(helpful=5, correct=10, safe="yes", format="prose"), version=v2)

    statuses = [ItemResult.Status.CONSENSUS] * 5 + [ItemResult.Status.DISPUTED] * 2 + [ItemResult.Status.PENDING]
    for item, status in zip(items, statuses * 3, strict=False):
        ItemResult.objects.create(item=item, kind=item.kind, status=status, reviewer_ids=[])
    return {"items": items, "v1": v1, "v2": v2, "reviewers": reviewers}


# Values a score may hold: the levels as sent, as text, as floats, off-scale, of the wrong type.
SCORE_VALUES = {
    "helpful": [1, 2, 3, 4, 5, "3", "5", 4.0, 2.0, 7, 0, True, False, None, "", "high", [3], {"v": 3}],
    "correct": [0, 2.5, 5, 7.5, 10, "2.5", "10", 5.0, 10.0, 2.50, 3, -1, None, "ten"],
    "safe": ["yes", "no", "Yes", "maybe", 1, True, None, ""],
    "format": ["prose", "list", "1", 1, 1.0, "List", None, ["list"]],
}
PREFERENCE_ODD = [
    ("choice", None),
    ("choice", "Tie"),
    ("choice", 3),
    ("chosen", "1"),
    ("chosen", 1.0),
    ("chosen", True),
    ("chosen", None),
    ("chosen", 10**12),
    ("chosen", -1),
    ("rejected", "0"),
    ("rejected", 2.5),
    ("rejected", False),
    ("rejected", 10**12),
    ("order", None),
]
# Categories "response:<not digits>" sort level with "response:0"; the ORM reader broke that tie
# by set iteration order, so a comparison with it leaves them out.
LEVEL_LABELS = [("chosen", 1.0), ("chosen", True), ("chosen", None), ("chosen", -1)]
ORDERS = [[0, 1], [1, 0], [0, 1, 2], [2, 0, 1], [1.0, 0], ["0", "1"], [True, False], [], [None, 1], {"a": 1}, None, 3]


def random_payloads(rng, kind: str, *, exotic: str | None) -> tuple[dict, object]:
    """A payload and display order of ``kind``; with ``exotic`` ("any", or "tie-free": no
    category that sorts level with another) also shapes the app does not write."""
    if kind == "rubric":
        keys = list(SCORE_VALUES)
        if not exotic:
            values = {"helpful": [1, 2, 3, 4, 5], "correct": [0, 2.5, 5, 7.5, 10], "safe": ["yes", "no"]}
            values["format"] = ["prose", "list", "1"]
            return {"response_index": 0, "scores": {k: values[k][int(rng.integers(len(values[k])))] for k in keys}}, [0]
        scores = {k: SCORE_VALUES[k][int(rng.integers(len(SCORE_VALUES[k])))] for k in keys if rng.random() < 0.9}
        return ({"response_index": 0, "scores": scores} if rng.random() < 0.95 else {"response_index": 0}), [0]
    if kind == "preference":
        n = int(rng.choice([2, 2, 2, 3, 4]))
        order = [int(x) for x in rng.permutation(n)]
        roll = rng.random()
        if roll < 0.15:
            payload = pref("tie")
        elif roll < 0.25:
            payload = pref("both_bad")
        else:
            chosen = int(rng.integers(n))
            rejected = int(rng.integers(n)) if rng.random() < 0.6 else None
            payload = pref(chosen=chosen, rejected=rejected if rejected != chosen else None)
        if exotic and rng.random() < 0.35:
            odd = PREFERENCE_ODD if exotic == "any" else [o for o in PREFERENCE_ODD if o not in LEVEL_LABELS]
            field, value = odd[int(rng.integers(len(odd)))]
            if field == "order":
                order = ORDERS[int(rng.integers(len(ORDERS)))]
            else:
                payload = {**payload, "choice": payload["choice"] or "response", field: value}
                if field == "choice" and value is None:
                    del payload["choice"]
        return payload, order
    actions = ["accept", "edit", "write", "unusable"]
    action = actions[int(rng.integers(4))]
    payload = gold(action, f"Answer {int(rng.integers(3))}." if action in ("edit", "write") else "")
    if exotic and rng.random() < 0.3:
        payload = [
            {**payload, "action": "skip"},
            {**payload, "action": None},
            {k: v for k, v in payload.items() if k != "action"},
            {**payload, "action": "edit", "answer": ""},
            {**payload, "action": "write", "answer": None},
            {**payload, "action": "Edit"},
        ][int(rng.integers(6))]
    return payload, [0, 1]


def build_random(project, version, reviewers, *, items: int, seed: int, exotic: str | None) -> list:
    """``items`` items of every kind, each reviewed by a random subset of ``reviewers``, dates over 80 days."""
    rng = np.random.default_rng(seed)
    made = []
    for i in range(items):
        kind = ("rubric", "preference", "gold")[i % 3]
        item = make_item(project, kind, responses=3)
        made.append(item)
        for reviewer in reviewers:
            if rng.random() < 0.45:
                continue
            payload, order = random_payloads(rng, kind, exotic=exotic)
            a = Annotation.objects.create(
                item=item,
                reviewer=reviewer,
                kind=kind,
                payload=payload,
                rubric_version=version if kind == "rubric" else None,
                # JSON null, not SQL NULL (the column is NOT NULL).
                display_order=Value(None, JSONField()) if order is None else order,
            )
            _reviewed(a, day=float(rng.random() * 80))
    return made
