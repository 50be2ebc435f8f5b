"""Contamination: planted near-duplicates of eval texts are caught; unrelated text raises no alarm."""

import random

import pytest
from django.urls import reverse

from evalsets.contamination import EvalIndex, check_texts, normalize
from evalsets.models import ContaminationCheckRun
from tests.evalsets.conftest import gold_payload
from training.models import SnapshotCheck, SnapshotRecord, TrainingSnapshot


def pairs_of(check) -> list:
    """The offending pairs of a check, from the evalsets side (the training side keeps no eval text)."""
    from evalsets.models import ContaminationReport

    report = ContaminationReport.objects.filter(snapshot_check=check).first()
    return report.pairs if report else []


EVAL = {
    "refund": (
        "A customer writes that they were charged twice for the annual plan after upgrading from the monthly "
        "plan in the middle of a billing cycle, and asks whether the second charge will be refunded "
        "automatically or whether they need to open a ticket with the billing team."
    ),
    "vpn": (
        "Explain step by step how an employee working from a hotel can connect to the company VPN when the "
        "hotel network blocks the default port, including which alternative port to try and how to check "
        "that traffic is actually going through the tunnel afterwards."
    ),
    "recipe": (
        "Write a short recipe for a vegetarian lentil soup that can be cooked in under forty minutes, lists "
        "every ingredient with its quantity for four people, and mentions one way to make it spicier for "
        "those who like heat."
    ),
}

RANDOM_WORDS = [
    "apple",
    "river",
    "mountain",
    "quiet",
    "engine",
    "yellow",
    "window",
    "market",
    "silver",
    "garden",
    "thunder",
    "pencil",
    "ocean",
    "bridge",
    "candle",
    "forest",
    "rocket",
    "velvet",
    "harbor",
    "meadow",
    "lantern",
    "puzzle",
    "copper",
    "island",
    "violin",
    "desert",
    "shadow",
    "crystal",
    "falcon",
    "orchard",
    "marble",
    "signal",
    "anchor",
    "blanket",
    "compass",
    "diamond",
    "feather",
    "glacier",
    "horizon",
    "jungle",
    "kettle",
    "ladder",
    "mirror",
    "needle",
    "oyster",
    "pepper",
    "quartz",
    "ribbon",
    "saddle",
    "tunnel",
    "umbrella",
    "valley",
    "walnut",
    "yogurt",
    "zebra",
]


def unrelated_texts(count: int, seed: int = 7) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"u{i}", " ".join(rng.choices(RANDOM_WORDS, k=rng.randint(20, 80)))) for i in range(count)]


def reword(text: str, positions: tuple[int, ...] = (10, 30)) -> str:
    """Swap the words at ``positions`` for stand-ins (a light paraphrase)."""
    return " ".join("something" if i in positions else w for i, w in enumerate(text.split()))


PLANTED = {
    "recased": EVAL["refund"].upper(),
    "respaced": "  \n".join(EVAL["vpn"].split(" ")).replace("step by step", "step   by\tstep"),
    "punctuated": EVAL["recipe"].replace(",", " ;").replace(" ", " - ", 3) + "!!!",
    "fullwidth": EVAL["refund"].replace("annual plan", "ａｎｎｕａｌ ｐｌａｎ"),
    "reworded": reword(EVAL["vpn"]),
    "truncated": " ".join(EVAL["recipe"].split()[:22]),
    "embedded": "Ticket 4411. Context follows. " + EVAL["refund"] + " Thanks, the support team (auto-reply).",
}


def test_normalization_folds_case_spacing_punctuation_and_unicode_width():
    assert normalize("  Hello,\tWORLD!!  ｆｕｌｌ—width_text ") == "hello world full width text"
    assert normalize("Straße") == normalize("STRASSE")
    assert normalize("") == ""


def test_planted_near_duplicates_are_caught_and_unrelated_text_is_not():
    train = [*PLANTED.items(), *unrelated_texts(300)]
    result = check_texts(EVAL.items(), train)

    flagged = {m.train_key: m for m in result.matches}
    assert set(flagged) == set(PLANTED)
    assert {k: flagged[k].eval_key for k in PLANTED} == {
        "recased": "refund",
        "respaced": "vpn",
        "punctuated": "recipe",
        "fullwidth": "refund",
        "reworded": "vpn",
        "truncated": "recipe",
        "embedded": "refund",
    }
    assert flagged["recased"].kind == flagged["respaced"].kind == flagged["fullwidth"].kind == "exact"
    assert flagged["truncated"].train_coverage == 1.0
    assert flagged["embedded"].eval_coverage == 1.0
    assert flagged["reworded"].score >= 0.5
    assert not result.passed
    assert result.texts_checked == len(train)


def test_a_heavier_paraphrase_needs_a_smaller_n():
    # One word in twelve changed leaves no 13-gram intact; 8-grams still cover most of the text.
    heavy = reword(EVAL["vpn"], positions=tuple(range(5, 60, 12)))
    assert check_texts(EVAL.items(), [("heavy", heavy)]).passed
    caught = check_texts(EVAL.items(), [("heavy", heavy)], n=8)
    assert [(m.train_key, m.eval_key) for m in caught.matches] == [("heavy", "vpn")]
    assert caught.matches[0].score >= 0.7
    assert check_texts(EVAL.items(), unrelated_texts(500), n=8).matches == []


def test_unrelated_texts_share_no_ngram_with_the_eval_set():
    result = check_texts(EVAL.items(), unrelated_texts(2000, seed=3))
    assert result.passed
    assert result.matches == []
    assert result.below_threshold_count == 0


def test_a_shared_boilerplate_sentence_stays_below_the_threshold():
    boiler = "Thank you for contacting support, we are happy to help you with your question today."
    ev = [("e", boiler + " " + EVAL["vpn"])]
    train = [("t", boiler + " " + " ".join(random.Random(1).choices(RANDOM_WORDS, k=60)))]
    result = check_texts(ev, train)
    assert result.passed
    assert result.below_threshold_count == 1


def test_short_texts_are_matched_exactly_only():
    ev = [("short", "How do I reset my password today?"), ("tiny", "Yes.")]
    train = [("same", "how do i RESET my password, today"), ("near", "How do I reset my email today?"), ("y", "yes")]
    result = check_texts(ev, train)
    assert [(m.train_key, m.eval_key, m.kind) for m in result.matches] == [("same", "short", "exact")]


def test_the_threshold_decides_what_blocks():
    half = " ".join(EVAL["vpn"].split()[:25]) + " " + " ".join(random.Random(2).choices(RANDOM_WORDS, k=40))
    strict = check_texts(EVAL.items(), [("half", half)], threshold=0.3)
    lenient = check_texts(EVAL.items(), [("half", half)], threshold=0.9)
    assert not strict.passed and lenient.passed
    assert lenient.below_threshold_count == 1


# --- eval items that share boilerplate ------------------------------------------------------------

TEMPLATE = "You are the support assistant for Acme Cloud; answer the customer below politely and accurately."
PAIRED = "Before you answer, check whether the customer is on the legacy plan or the current one."


def question(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(RANDOM_WORDS, k=words)) + "?"


def boilerplate_eval_set() -> dict[str, str]:
    """Eval prompts that share spans: 40 open with one template (15 words), and 10 pairs of them also
    end with a second sentence (16 words), as Q97 and Q105 shared one; the question between is their own."""
    rng = random.Random(105)
    evals = {f"q{i}": f"{TEMPLATE} {question(rng, 25)}" for i in range(40)}
    for i in range(0, 20, 2):
        for key in (f"q{i}", f"q{i + 1}"):
            evals[key] = f"{evals[key]} {PAIRED}"
    return evals


def planted_copies(evals: dict[str, str]) -> dict[str, str]:
    """Copies of items that share boilerplate with others: re-cased, reworded, truncated, embedded."""
    planted = {}
    for i in range(0, 40, 3):
        source = f"q{i}"
        text = evals[source]
        words = text.split()
        planted[f"{source}/recased"] = text.upper()
        planted[f"{source}/reworded"] = " ".join("changed" if j == 20 else w for j, w in enumerate(words))
        planted[f"{source}/truncated"] = " ".join(words[: len(words) * 2 // 3 + 2])
        planted[f"{source}/embedded"] = "Ticket 4411, forwarded: " + text + " Sent from my phone."
    return planted


def test_every_copy_of_an_eval_item_that_shares_boilerplate_is_paired_with_its_source_alone():
    evals = boilerplate_eval_set()
    planted = planted_copies(evals)
    rng = random.Random(97)
    # Training texts built on the same template and sentence, with questions of their own.
    templated = {f"new{i}": f"{TEMPLATE} {question(rng, 25)} {PAIRED if i % 2 else ''}" for i in range(200)}
    result = check_texts(evals.items(), [*planted.items(), *templated.items(), *unrelated_texts(200)])

    pairs = [(m.train_key, m.eval_key) for m in result.matches]
    assert sorted(pairs) == sorted((key, key.split("/")[0]) for key in planted), "each copy, with its source only"
    assert result.below_threshold_count > 0, "pairs through the shared spans were scored, and fell short"
    kinds = {m.train_key.split("/")[1]: m.kind for m in result.matches}
    assert kinds["recased"] == "exact" and kinds["reworded"] == "ngram"


def test_a_copy_is_not_also_paired_with_a_short_item_that_shares_a_sentence_with_its_source():
    """The case that misled admins: q0 and q1 share a sentence, and q1 is so short that the sentence
    alone covers most of it; the copy of q0 explains that sentence, so q1 is left out."""
    evals = boilerplate_eval_set()
    short = {"q0": evals["q0"], "q1": f"{PAIRED} Which plan am I on?"}
    copy = " ".join("changed" if j == 20 else w for j, w in enumerate(evals["q0"].split()))
    result = check_texts(short.items(), [("copy", copy)])
    assert [(m.train_key, m.eval_key) for m in result.matches] == [("copy", "q0")]
    assert (result.explained_count, result.below_threshold_count) == (1, 0)


def test_a_text_that_pastes_two_eval_items_together_is_paired_with_both():
    evals = boilerplate_eval_set()
    result = check_texts(evals.items(), [("both", evals["q4"] + " And also: " + evals["q30"])])
    found = {m.eval_key: m for m in result.matches}
    assert set(found) == {"q4", "q30"}
    assert [m.secondary for m in result.matches].count(True) == 1


def test_a_text_made_only_of_boilerplate_many_eval_items_share_is_no_copy_of_any():
    evals = boilerplate_eval_set()
    result = check_texts(evals.items(), [("template", TEMPLATE + " " + PAIRED)])
    assert result.passed and result.matches == []


def test_identical_eval_texts_count_once_so_a_copy_of_a_repeated_prompt_still_scores_in_full():
    """Versions of a project repeat their prompts: a repeat must not make its own words look shared."""
    copy = [("copy", reword(EVAL["vpn"], positions=(3,)))]
    alone = check_texts([(("v2", "prompt"), EVAL["vpn"])], copy)
    evals = [(("v2", "prompt"), EVAL["vpn"]), (("v1", "prompt"), EVAL["vpn"]), (("v1b", "prompt"), EVAL["vpn"])]
    repeated = check_texts(evals, copy)
    assert [(m.eval_key, m.score) for m in repeated.matches] == [(("v2", "prompt"), alone.matches[0].score)]
    assert repeated.matches[0].score > 0.9


def test_bad_settings_say_how_to_fix_them():
    with pytest.raises(ValueError, match="threshold=0: use a share of a text in"):
        check_texts(EVAL.items(), [], threshold=0)
    with pytest.raises(ValueError, match="n=0: the n-gram size must be at least 1"):
        EvalIndex(n=0)


def test_an_empty_eval_side_passes_everything():
    assert check_texts([], PLANTED.items()).passed


# --- the service: snapshot in, SnapshotCheck out -------------------------------------------------


@pytest.fixture
def frozen_eval(make_item, freeze):
    make_item("gold", prompt=EVAL["refund"], payload=gold_payload(EVAL["recipe"]))
    make_item("gold", prompt=EVAL["vpn"], payload=gold_payload("Use port 443 and check your public IP."))
    return freeze().version


def make_snapshot(name: str, texts: list[tuple[str, str]]) -> TrainingSnapshot:
    snapshot = TrainingSnapshot.objects.create(
        name=name, sha256=str(abs(hash(name))).rjust(64, "0"), sft_count=len(texts)
    )
    for position, (prompt, completion) in enumerate(texts):
        SnapshotRecord.objects.create(
            snapshot=snapshot,
            position=position,
            kind="sft",
            messages=[{"role": "user", "content": prompt}],
            completion=completion,
            source_item_id=1000 + position,
            content_hash=f"{position:064d}",
        )
    return snapshot


@pytest.mark.django_db
def test_a_contaminated_snapshot_is_blocked_with_the_pairs_side_by_side(frozen_eval):
    planted = PLANTED["reworded"]
    snapshot = make_snapshot("s1", [("An unrelated question about invoices?", "A fine answer."), (planted, "Sure.")])
    from evalsets.services import snapshot_contamination_check

    check = snapshot_contamination_check(snapshot=snapshot)

    assert check.passed is False
    assert check.evalset_versions == [{"id": frozen_eval.pk, "name": "support-eval-v1", "sha256": frozen_eval.sha256}]
    assert check.report["offending_count"] == 1
    pair = pairs_of(check)[0]
    assert pair["train"]["text"] == planted and pair["train"]["position"] == 1 and pair["train"]["field"] == "prompt"
    assert pair["eval"]["text"] == EVAL["vpn"] and pair["eval"]["version"] == "support-eval-v1"
    assert pair["kind"] == "ngram" and pair["score"] >= 0.5
    assert SnapshotCheck.objects.filter(snapshot=snapshot).latest() == check


@pytest.mark.django_db
def test_an_eval_answer_reused_as_a_training_completion_is_caught(frozen_eval):
    snapshot = make_snapshot("s2", [("Give me a soup recipe", EVAL["recipe"].lower())])
    from evalsets.services import snapshot_contamination_check

    check = snapshot_contamination_check(snapshot=snapshot)
    assert not check.passed
    pair = pairs_of(check)[0]
    assert (pair["train"]["field"], pair["eval"]["field"], pair["kind"]) == ("completion", "reference", "exact")


@pytest.mark.django_db
def test_a_clean_snapshot_passes_and_names_the_versions_it_was_checked_against(frozen_eval):
    snapshot = make_snapshot("s3", [(t, t[::-1]) for _, t in unrelated_texts(50)])
    from evalsets.services import snapshot_contamination_check

    check = snapshot_contamination_check(snapshot=snapshot)
    assert check.passed is True
    assert pairs_of(check) == [] and check.report["texts_checked"] == 100
    assert [v["id"] for v in check.evalset_versions] == [frozen_eval.pk]


@pytest.mark.django_db
def test_the_celery_task_records_a_verdict(frozen_eval):
    from evalsets.tasks import snapshot_contamination_check_run

    snapshot = make_snapshot("s4", [(EVAL["refund"], "ok")])
    snapshot_contamination_check_run.apply(args=[snapshot.pk])
    assert SnapshotCheck.objects.get(snapshot=snapshot).passed is False
    snapshot_contamination_check_run.apply(args=[999_999])  # a vanished snapshot is not an error


@pytest.mark.django_db
def test_an_admin_queues_a_check_from_the_page_and_sees_the_pairs_escaped(
    client, admin_user, frozen_eval, django_capture_on_commit_callbacks, monkeypatch
):
    from evalsets.tasks import contamination_check_run_task as task

    sent = []
    # The worker's side, run here: what the broker would deliver.
    monkeypatch.setattr(task, "delay", lambda *args: sent.append(args) or task.apply(args=args))
    snapshot = make_snapshot("s5", [("<script>alert(1)</script> " + EVAL["vpn"], "ok")])
    client.force_login(admin_user)
    url = reverse("evalsets:snapshot-contamination-check", args=[snapshot.pk])
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(url, headers={"HX-Request": "true"})
    run = ContaminationCheckRun.objects.get(snapshot=snapshot)  # the row the API polls, made by the page too
    assert len(callbacks) == 1 and sent == [(run.pk,)]
    run.refresh_from_db()
    assert run.status == "succeeded" and run.created_by == admin_user and run.verdict.passed is False
    assert response.status_code == 200
    assert b'id="check-status"' in response.content and b"<h1>" not in response.content
    assert "contamination-check-queued" in response["HX-Trigger"]
    run.refresh_from_db()
    assert run.status == "succeeded" and run.verdict == SnapshotCheck.objects.get(snapshot=snapshot)

    page = client.get(reverse("evalsets:snapshot-contamination", args=[snapshot.pk]))
    body = page.content.decode()
    assert "blocked" in body and 'id="offending-pairs"' in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "<script>alert(1)" not in body


@pytest.mark.django_db
def test_a_check_shows_its_progress_while_it_runs_and_the_verdict_when_done(
    client, admin_user, frozen_eval, django_capture_on_commit_callbacks, monkeypatch
):
    from evalsets import services
    from evalsets.tasks import contamination_check_run_task as task

    monkeypatch.setattr(task, "delay", lambda *args: None)  # the worker has not started it yet
    snapshot = make_snapshot("s7", [(f"question {i} about something else", f"answer {i}") for i in range(12)])
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("evalsets:snapshot-contamination-check", args=[snapshot.pk]))
    run = ContaminationCheckRun.objects.get(snapshot=snapshot)
    page = client.get(reverse("evalsets:snapshot-contamination", args=[snapshot.pk])).content.decode()
    poll_url = reverse("evalsets:contamination-run", args=[run.pk])
    assert f'hx-get="{poll_url}"' in page and "Waiting for a worker" in page

    # The worker's side: progress is written as the training texts are checked, each visible at once.
    seen = []
    real = ContaminationCheckRun.report_progress
    monkeypatch.setattr(services, "PROGRESS_EVERY_TEXTS", 5)
    monkeypatch.setattr(
        ContaminationCheckRun,
        "report_progress",
        classmethod(lambda cls, pk, fraction, message: seen.append((fraction, message)) or real(pk, fraction, message)),
    )
    assert services.contamination_check_run(run_id=run.pk).status == "succeeded"
    assert [f for f, _ in seen] == sorted(f for f, _ in seen) and len(seen) >= 4
    assert ("Checked 10 of about 24 training texts" in {m for _, m in seen}) and seen[-1][1] == "Writing the verdict"
    assert services.contamination_check_run(run_id=run.pk) is None, "a redelivered message does nothing"

    done = client.get(poll_url, headers={"HX-Request": "true"})
    assert done.status_code == 286 and done["HX-Refresh"] == "true"
    assert "passed" in done.content.decode() and "hx-trigger" not in done.content.decode()
    assert SnapshotCheck.objects.filter(snapshot=snapshot).count() == 1


@pytest.mark.django_db
def test_reviewers_cannot_open_or_run_snapshot_checks(client, alice, frozen_eval):
    snapshot = make_snapshot("s6", [("q", "a")])
    client.force_login(alice)
    assert client.get(reverse("evalsets:snapshot-contamination", args=[snapshot.pk])).status_code == 403
    assert client.post(reverse("evalsets:snapshot-contamination-check", args=[snapshot.pk])).status_code == 403
    run = ContaminationCheckRun.objects.create(snapshot=snapshot)
    assert (
        client.get(reverse("evalsets:contamination-run", args=[run.pk]), headers={"HX-Request": "true"}).status_code
        == 403
    )
    assert not SnapshotCheck.objects.exists() and ContaminationCheckRun.objects.count() == 1


def test_the_check_task_runs_on_the_default_queue_not_the_gpu_one():
    from config.celery import app

    for name in ("snapshot_contamination_check_run", "contamination_check_run_task"):
        assert app.amqp.router.route({}, f"evalsets.tasks.{name}")["queue"].name == "default"


@pytest.mark.django_db
def test_records_repeated_across_versions_are_indexed_once_and_reported_from_the_newest(make_item, freeze):
    from evalsets.services import snapshot_contamination_check

    make_item("gold", prompt=EVAL["vpn"], payload=gold_payload("Use port 443."))
    v1 = freeze().version
    make_item("gold", prompt=EVAL["recipe"], payload=gold_payload("Lentils, onion, cumin."))
    v2 = freeze("Add the soup question.").version
    check = snapshot_contamination_check(snapshot=make_snapshot("s7", [(EVAL["vpn"], "ok")]))
    assert check.report["eval_texts"] == 4  # two records with a prompt and an answer each, not three
    assert [v["id"] for v in check.evalset_versions] == [v1.pk, v2.pk]
    assert pairs_of(check)[0]["eval"]["version"] == "support-eval-v2"


@pytest.mark.django_db
def test_the_snapshot_list_shows_each_latest_verdict_to_admins_only(client, admin_user, alice, frozen_eval):
    from evalsets.services import snapshot_contamination_check

    dirty = make_snapshot("dirty <b>one</b>", [(EVAL["vpn"], "ok")])
    make_snapshot("unchecked", [("q", "a")])
    snapshot_contamination_check(snapshot=dirty)
    client.force_login(admin_user)
    body = client.get(reverse("evalsets:snapshot-list")).content.decode()
    assert "dirty &lt;b&gt;one&lt;/b&gt;" in body and "blocked" in body and "not checked" in body
    assert reverse("evalsets:snapshot-contamination", args=[dirty.pk]) in body
    client.force_login(alice)
    assert client.get(reverse("evalsets:snapshot-list")).status_code == 403


def test_freezing_a_new_version_blocks_snapshots_checked_before_it_until_a_recheck_passes(
    make_item, freeze, django_capture_on_commit_callbacks
):
    """A passing check vouches only for the eval sets that existed then: a new freeze writes a failing,
    explained check and queues a re-check, which passes again when nothing overlaps."""
    from evalsets.services import snapshot_contamination_check
    from evalsets.tasks import snapshot_contamination_check_run
    from training.services import snapshot_is_trainable, snapshot_untrainable_reason

    snapshot = TrainingSnapshot.objects.create(name="snap", sha256="c" * 64)
    assert snapshot_contamination_check(snapshot=snapshot).passed

    make_item("gold", prompt="A prompt about refunds that no training text shares at all.")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        version = freeze().version
    assert len(callbacks) == 1  # the re-check, queued on commit
    assert not snapshot_is_trainable(snapshot)
    snapshot_contamination_check_run(snapshot.pk)  # what the worker runs for that message

    checks = list(SnapshotCheck.objects.filter(snapshot=snapshot).order_by("id"))
    assert [c.passed for c in checks] == [True, False, True]
    assert checks[1].report["stale"] is True and version.name in checks[1].report["reason"]
    assert [v["id"] for v in checks[2].evalset_versions] == [version.pk]
    assert snapshot_is_trainable(snapshot)
    assert snapshot_untrainable_reason(snapshot) == ""


def test_a_snapshot_with_a_stale_check_says_why_it_cannot_be_trained(make_item, freeze):
    from evalsets.services import snapshot_contamination_check
    from training.services import snapshot_is_trainable, snapshot_untrainable_reason

    snapshot = TrainingSnapshot.objects.create(name="snap", sha256="d" * 64)
    snapshot_contamination_check(snapshot=snapshot)
    make_item("gold")
    version = freeze().version  # the re-check is queued on commit, which this test never reaches

    assert not snapshot_is_trainable(snapshot)
    assert "needs a new contamination check" in snapshot_untrainable_reason(snapshot)
    assert version.name in snapshot_untrainable_reason(snapshot)
