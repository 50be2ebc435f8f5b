"""The audit's detectors: each finds its planted flaw with the right share and stays quiet on clean data."""

import random
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from annotate.audit import (
    Auditor,
    AuditRecord,
    answers_disagree,
    apply_gates,
    binomial_two_sided,
    facts,
    gates_merge,
    matcher,
    opening_and_closing,
)

SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "sa", "vel", "dor", "pi", "ne", "qua", "bri"]
VOCAB = sorted({a + b + c for a in SYLLABLES for b in SYLLABLES for c in ["", "n", "s", "r", "l"]})[:600]


def sentence(rng: random.Random) -> str:
    words = rng.sample(VOCAB, rng.randint(5, 11))
    return " ".join(words).capitalize() + rng.choice([".", ".", "!", "?"])


def answer(rng: random.Random, sentences: int | None = None) -> str:
    return " ".join(sentence(rng) for _ in range(sentences or rng.randint(2, 5)))


def clean_records(n: int, *, seed: int = 0, dpo_share: float = 0.5, start: int = 1) -> list[AuditRecord]:
    """Varied answers from several sources and provenances: nothing in them a fine-tune should not copy."""
    rng = random.Random(seed)
    out = []
    for i in range(start, start + n):
        source = rng.choice(["model-a", "model-b", "model-c", "human"])
        provenance = rng.choice(["human", "distilled", "production_log"])
        if rng.random() < dpo_share:
            chosen, rejected = answer(rng), answer(rng)
            left = rng.randint(0, 2)
            out.append(
                AuditRecord(
                    id=i,
                    kind="dpo",
                    prompt=f"Question {i}: " + sentence(rng),
                    target=chosen,
                    rejected=rejected,
                    provenance=provenance,
                    source=source,
                    rejected_source=rng.choice(["model-a", "model-b"]),
                    decided_by="consensus",
                    agreement=1.0,
                    left_picks=left,
                    picks=2,
                )
            )
        else:
            out.append(
                AuditRecord(
                    id=i,
                    kind="sft",
                    prompt=f"Question {i}: " + sentence(rng),
                    target=answer(rng),
                    provenance=provenance,
                    source=source,
                    decided_by=rng.choice(["consensus", "adjudicated"]),
                    agreement=rng.choice([1.0, 0.5]),
                )
            )
    return out


def findings_of(records, **kwargs) -> dict[str, list[dict]]:
    report = Auditor(**kwargs).feed_all(records).report()
    by_type: dict[str, list[dict]] = {}
    for finding in report["findings"]:
        by_type.setdefault(finding["type"], []).append(finding)
    return by_type


def test_clean_data_has_no_findings():
    assert findings_of(clean_records(3000)) == {}


def test_a_sign_off_on_most_of_one_models_answers_is_found_with_its_share():
    rng = random.Random(1)
    records = clean_records(2000, seed=1)
    planted = 0
    for index, record in enumerate(records):
        if record.source == "model-b" and rng.random() < 0.4:
            records[index] = AuditRecord(**{**_fields(record), "target": record.target + " Thanks!"})
            planted += 1
    model_b = sum(r.source == "model-b" for r in records)
    (finding,) = findings_of(records)["recurring_closing"]
    assert finding["phrase"] == "thanks!" and finding["count"] == planted
    assert finding["share"] == pytest.approx(planted / len(records), abs=1e-4)
    by_source = {row["source"]: row for row in finding["by_source"]}
    assert set(by_source) == {"model-b"}
    assert by_source["model-b"]["share"] == pytest.approx(planted / model_b, abs=1e-4)
    assert finding["lift"] > 10 and len(finding["examples"]) == 8


def test_with_a_human_baseline_the_lift_is_over_the_answers_people_wrote():
    records = clean_records(1500, seed=2, dpo_share=0.0)
    records = [
        AuditRecord(**{**_fields(r), "target": r.target + " Happy to help!"}) if r.source != "human" and i % 3 else r
        for i, r in enumerate(records)
    ]
    (finding,) = findings_of(records)["recurring_closing"]
    assert finding["phrase"] == "happy to help!" and finding["baseline_share"] == 0.0
    non_human = [r for r in records if r.source != "human"]
    assert finding["lift"] > 10 and finding["count"] == sum(r.target.endswith("Happy to help!") for r in non_human)


def test_an_ai_disclaimer_is_reported_whatever_its_share():
    records = clean_records(500, seed=3)
    records[10] = AuditRecord(**{**_fields(records[10]), "target": "As an AI language model, I cannot see orders."})
    (finding,) = findings_of(records)["known_phrase"]
    assert finding["count"] == 1 and finding["examples"] == [records[10].id] and finding["category"] == "AI disclaimer"


def test_answers_that_disagree_on_a_fact_are_found_with_each_value():
    records = clean_records(400, seed=4, dpo_share=0.0)
    windows = ["30"] * 80 + ["14"] * 12 + ["60"] * 8
    for index, window in enumerate(windows):
        text = f"You can get a full refund within {window} days of delivery. " + records[index].target
        records[index] = AuditRecord(**{**_fields(records[index]), "target": text})
    (finding,) = findings_of(records)["conflicting_facts"]
    assert finding["slot"] == "refund within … day of delivery"
    assert [(v["value"], v["count"]) for v in finding["values"]] == [("30", 80), ("14", 12), ("60", 8)]
    assert finding["count"] == 20 and finding["share"] == 0.2
    assert apply_gates([finding], gates_merge())[0]["gate"] == "block"  # a wrong fact blocks by default


def test_the_same_pair_with_chosen_and_rejected_swapped_is_found():
    records = clean_records(300, seed=5, dpo_share=1.0)
    first = records[0]
    records.append(AuditRecord(**{**_fields(first), "id": 9999, "target": first.rejected, "rejected": first.target}))
    (finding,) = findings_of(records)["swapped_pairs"]
    assert finding["count"] == 2 and set(finding["examples"]) == {first.id, 9999}


def test_pairs_that_teach_nothing_are_found_by_kind():
    records = clean_records(300, seed=6, dpo_share=1.0)
    long_answer = "This is a long and careful answer with many words in it for the customer today."
    plants = {
        0: ("Same words here.", "Same words here."),
        1: ("Refunds take five days.", "refunds   take five days"),
        2: ("A full, careful answer with twenty words " * 2, ""),
        **{i: (long_answer, "No.") for i in range(3, 9)},  # a habit once it is 1% of the pairs and 5 of them
    }
    for index, (chosen, rejected) in plants.items():
        records[index] = AuditRecord(**{**_fields(records[index]), "target": chosen, "rejected": rejected})
    found = findings_of(records)
    assert found["pair_identical"][0]["examples"] == [records[0].id]
    assert found["pair_format_only"][0]["examples"] == [records[1].id]
    assert found["pair_empty"][0]["examples"] == [records[2].id]
    assert found["pair_far_shorter"][0]["count"] >= 6 and records[3].id in found["pair_far_shorter"][0]["examples"]


def test_chosen_longer_than_rejected_in_most_pairs_is_a_length_bias():
    rng = random.Random(7)
    records = [
        AuditRecord(
            id=i,
            kind="dpo",
            prompt=f"Q{i}",
            target=answer(rng, 4),
            rejected=answer(rng, 2 if i % 5 else 6),
            source="m",
            provenance="distilled",
        )
        for i in range(200)
    ]
    (finding,) = findings_of(records)["length_bias"]
    assert finding["share"] == pytest.approx(0.8, abs=0.03) and finding["p_value"] < 1e-6


def test_reviewers_who_pick_the_first_shown_response_leave_a_position_bias():
    records = [
        AuditRecord(**{**_fields(r), "left_picks": 2 if r.id % 5 else 0, "picks": 2})
        for r in clean_records(200, seed=8, dpo_share=1.0)
    ]
    (finding,) = findings_of(records)["position_bias"]
    assert finding["share"] == pytest.approx(0.8, abs=0.01)


def test_one_template_filling_the_data_is_found():
    records = clean_records(400, seed=9, dpo_share=0.0)
    for index in range(0, 400, 2):
        text = f"Your order NW-{100000 + index} ships in {index % 5 + 1} days. Track it from the link we emailed."
        records[index] = AuditRecord(**{**_fields(records[index]), "target": text})
    (finding,) = findings_of(records)["template"]
    assert finding["share"] == pytest.approx(0.5, abs=0.01) and "nw-# ships in # days" in finding["template"]


def test_one_source_providing_nearly_everything_is_flagged():
    records = [AuditRecord(**{**_fields(r), "provenance": "self_generated"}) for r in clean_records(100, seed=10)]
    records += clean_records(5, seed=11, start=1000)
    (finding,) = findings_of(records)["dominant_source"]
    assert finding["source"] == "self_generated" and finding["share"] >= 0.9


def test_self_generated_text_shows_its_repetition_per_provenance():
    rng = random.Random(12)
    stock = [answer(rng) for _ in range(5)]
    records = clean_records(300, seed=12, dpo_share=0.0)
    records += [
        AuditRecord(id=5000 + i, kind="sft", prompt=f"P{i}", target=rng.choice(stock), provenance="self_generated")
        for i in range(300)
    ]
    repetition = Auditor().feed_all(records).report()["repetition"]
    assert repetition["self_generated"]["distinct_2"] < 0.1 < repetition["human"]["distinct_2"]
    assert repetition["self_generated"]["compression_ratio"] < repetition["human"]["compression_ratio"]


def test_same_prompt_with_materially_different_answers_is_a_candidate_then_judged_on_text():
    records = clean_records(50, seed=13, dpo_share=0.0)
    a, b = records[0], records[1]
    records[1] = AuditRecord(**{**_fields(b), "prompt": a.prompt})
    groups = Auditor().feed_all(records).report()["same_prompt_candidates"]
    assert groups == [sorted([a.id, b.id])] or groups == [[a.id, b.id]] or groups == [[b.id, a.id]]
    assert answers_disagree([a.target, b.target])
    assert not answers_disagree(["Refunds take 5 days.", "Refunds take 5 days!"])


def test_the_text_features_read_what_a_person_would():
    assert opening_and_closing("Hi there! Your refund is on its way. Thanks!") == ("hi there!", "thanks!")
    assert facts("Refunds arrive in 5-7 business days, or a full refund within 30 days of delivery.") == [
        ("refund within … day of delivery", "30"),  # "arrive in 5-7 days" has one word of context: not a slot
    ]
    assert facts("It ships in 3 days.") == []  # too little context to say which quantity it is
    assert binomial_two_sided(5, 10) == pytest.approx(1.0)
    assert binomial_two_sided(0, 10) == pytest.approx(2 * 0.5**10)


def _fields(record: AuditRecord) -> dict:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


def test_every_finding_matches_exactly_the_examples_it_is_about():
    """Excluding a finding from a new snapshot must remove its examples and nothing else."""
    rng = random.Random(14)
    records = clean_records(600, seed=14)
    thanks, wrong_window, identical = set(), set(), set()
    for index, record in enumerate(records):
        if record.kind == "sft" and record.source != "human" and index % 3 == 0:
            records[index] = AuditRecord(**{**_fields(record), "target": record.target + " Thanks!"})
            thanks.add(record.id)
        elif record.kind == "sft" and index % 7 == 1:
            window = "14" if rng.random() < 0.2 else "30"
            text = f"You get a full refund within {window} days of delivery. " + record.target
            records[index] = AuditRecord(**{**_fields(record), "target": text})
            if window == "14":
                wrong_window.add(record.id)
        elif record.kind == "dpo" and index % 9 == 2:
            records[index] = AuditRecord(**{**_fields(record), "rejected": record.target})
            identical.add(record.id)
    first_pair = next(r for r in records if r.kind == "dpo" and r.id not in identical)
    swapped = AuditRecord(
        **{**_fields(first_pair), "id": 9999, "target": first_pair.rejected, "rejected": first_pair.target}
    )
    records.append(swapped)
    report = Auditor().feed_all(records).report()
    by_type = {f["type"]: f for f in report["findings"]}
    expected = {
        "recurring_closing": thanks,
        "conflicting_facts": wrong_window,
        "pair_identical": identical,
        "swapped_pairs": {first_pair.id, 9999},
    }
    for kind, ids in expected.items():
        matches = matcher(by_type[kind])
        assert {r.id for r in records if matches(r)} == ids, kind
    assert matcher(next(f for f in report["findings"] if f["type"] == "recurring_closing"))  # a predicate
    assert len({f["key"] for f in report["findings"]}) == len(report["findings"])  # keys tell findings apart


def test_a_phrase_in_the_middle_of_many_answers_is_one_finding_matching_exactly_its_answers():
    """Neither an opening nor a closing: a sentence dropped in mid-answer, reported once at its full length."""
    records = clean_records(1500, seed=21)
    planted = set()
    for index, record in enumerate(records):
        if index % 3 == 0:
            first, _, rest = record.target.partition(". ")
            text = f"{first}. As an expert I recommend this warmly. {rest or 'Kalo mi.'}"
            records[index] = AuditRecord(**{**_fields(record), "target": text})
            planted.add(record.id)
    (finding,) = findings_of(records)["recurring_phrase"]
    assert finding["phrase"] == "as an expert i recommend this warmly"
    assert finding["share"] == pytest.approx(len(planted) / len(records), abs=0.02)
    matches = matcher(finding)
    assert {r.id for r in records if matches(r)} == planted
    assert set(finding["examples"]) <= planted


def test_gates_follow_the_strictest_project_and_drop_what_is_off():
    finding = {"type": "recurring_closing", "share": 0.08, "key": "recurring_closing:thanks!"}
    assert apply_gates([finding], gates_merge())[0]["gate"] == "warn"
    strict = {"recurring_closing": {"action": "block", "min_share": 0.05}}
    lax = {"recurring_closing": {"action": "off", "min_share": 0.5}}
    assert apply_gates([finding], gates_merge(lax, strict))[0]["gate"] == "block"
    assert apply_gates([finding], gates_merge(lax)) == []
    below = {"recurring_closing": {"action": "block", "min_share": 0.2}}
    assert apply_gates([finding], gates_merge(below))[0]["gate"] == "info"


def test_gates_given_by_a_person_are_checked_with_a_clear_error():
    from django.core.exceptions import ValidationError

    from annotate.audit import gates_validate

    assert gates_validate({"template": {"action": "block", "min_share": 0.3}}) == {
        "template": {"action": "block", "min_share": 0.3}
    }
    for bad, message in (
        ({"thanks": {"action": "block"}}, "is not an audit finding type"),
        ({"template": {"action": "stop"}}, "action is one of off, warn, block"),
        ({"template": {"action": "warn", "min_share": 2}}, "min_share is a number from 0 to 1"),
    ):
        with pytest.raises(ValidationError, match=message):
            gates_validate(bad)


def test_same_prompt_answers_that_differ_in_substance_are_a_finding_and_rewordings_are_not():
    from annotate.audit import same_prompt_finding

    differ = [
        (1, "How long is the refund window?", "Thirty days from delivery, refunded to your card."),
        (2, "How long is the refund window?", "We do not offer refunds on sale items at all."),
    ]
    reworded = [
        (3, "Where is my order?", "It ships in three days."),
        (4, "Where is my order?", "It ships in three days!"),
    ]
    finding = same_prompt_finding([differ, reworded], n_sft=10)
    assert finding["count"] == 2 and finding["share"] == 0.2 and set(finding["examples"]) == {1, 2}
    assert same_prompt_finding([reworded], n_sft=10) is None


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_the_fast_format_key_of_ascii_text_is_the_patterns(text):
    from annotate.audit import _FORMAT_ONLY, format_key

    assert format_key(text, normalized=True) == _FORMAT_ONLY.sub("", text)


@given(st.text(alphabet="0123456789$.,- tosdayhurweklpcnUSDEGBP%–", max_size=60))
def test_quantities_are_found_where_the_pattern_finds_them(text):
    from annotate.audit import _QUANTITY, _quantities

    assert [m.span() for m in _quantities(text)] == [m.span() for m in _QUANTITY.finditer(text)]


def _opening_and_closing_by_sentences(text: str) -> tuple[str, str]:
    """The definition: split into sentences at ". ", "! ", "? "; the first's first six words, the last's last six."""
    from annotate.audit import normalize

    text = normalize(text)
    if not text:
        return "", ""
    sentences = re.split(r"(?<=[.!?]) ", text)
    return " ".join(sentences[0].split(" ")[:6]), " ".join(sentences[-1].split(" ")[-6:])


@given(st.lists(st.sampled_from(["a", "b.", "c!", "d?", "e", "..", "x?y", "!", " ", "Ünï.", "\t"]), max_size=24))
def test_openings_and_closings_are_the_first_and_last_sentences_words(words):
    text = " ".join(words)
    assert opening_and_closing(text) == _opening_and_closing_by_sentences(text)


def test_the_text_detectors_fed_apart_give_the_same_report():
    """The worker may run the text detectors in a second process over the same records: the report is the same."""
    records = clean_records(1200, seed=22)
    for index, record in enumerate(records):
        if index % 3 == 0:
            window = 14 if index % 9 else 30
            text = f"As an expert I recommend this warmly. You get a refund within {window} days of it."
            records[index] = AuditRecord(**{**_fields(record), "target": text + " " + record.target + " Thanks!"})
    whole = Auditor().feed_all(records).report()
    stream, text = Auditor(parts="stream").feed_all(records), Auditor(parts="text").feed_all(records)
    stream.adopt_text(text.text_state())
    assert stream.report() == whole
    assert {f["type"] for f in whole["findings"]} >= {"recurring_phrase", "conflicting_facts"}
    with pytest.raises(ValueError, match="not one snapshot"):
        Auditor(parts="stream").feed_all(records[:10]).adopt_text(text.text_state())


def test_a_phrase_counted_on_a_sample_before_it_was_tracked_is_found_with_an_error_bound_that_holds(monkeypatch):
    """In a snapshot of more than SAMPLE_MIN answers only a sample has its 4-grams counted; a phrase frequent
    there is then counted exactly in every answer. Its count before that is the sample's estimate, reported
    with its bound."""
    from annotate import audit

    monkeypatch.setattr(audit, "SAMPLE_MIN", 300)
    monkeypatch.setattr(audit, "PHRASE_EVERY", 4)
    monkeypatch.setattr(audit, "CHUNK", 500)
    records = clean_records(4000, seed=23)
    planted = set()
    for index, record in enumerate(records):
        if index >= 1000 and index % 2:  # from the third chunk on: tracked after it, estimated before
            first, _, rest = record.target.partition(". ")
            text = f"{first}. Our returns desk answers within the hour. {rest or 'Kalo mi.'}"
            records[index] = AuditRecord(**{**_fields(record), "target": text})
            planted.add(record.id)
    report = Auditor(expected=len(records)).feed_all(records).report()
    (finding,) = [f for f in report["findings"] if f["type"] == "recurring_phrase"]
    assert finding["phrase"] == "our returns desk answers within the hour"
    assert finding["count_error"] > 0 and abs(finding["count"] - len(planted)) <= finding["count_error"]
    assert finding["share_error"] == round(finding["count_error"] / len(records), 4)
    matches = matcher(finding)
    assert {r.id for r in records if matches(r)} == planted and set(finding["examples"]) <= planted
    exact = Auditor().feed_all(records).report()  # no expected size: every answer counted, no bound
    (whole,) = [f for f in exact["findings"] if f["type"] == "recurring_phrase"]
    assert whole["count"] == len(planted) and "count_error" not in whole


def test_a_bounded_counter_keeps_its_frequent_keys_exact_and_bounds_the_rest():
    from annotate.audit import BoundedCounter

    rng = random.Random(24)
    counter, truth = BoundedCounter(50, examples=True), {}
    for chunk in range(40):
        keys = [f"rare {rng.randrange(10**6)}" for _ in range(60)] + ["early"] * 5
        keys += ["late"] * 7 if chunk >= 20 else []
        ids = list(range(chunk * 100, chunk * 100 + len(keys)))
        counter.update(keys, ids)
        for key in keys:
            truth[key] = truth.get(key, 0) + 1
    assert len(counter.counts) <= 50 and counter.slack > 0  # it had to drop keys
    assert counter.get("early") == truth["early"] and counter.error("early") == 0  # kept from the start: exact
    assert counter.get("late") <= truth["late"] <= counter.get("late") + counter.error("late")
    for key, count in counter.counts.items():
        assert count <= truth[key] <= count + counter.error(key)
    assert len(counter.example_ids("early")) == 8 and counter.most_common(1)[0][0] in {"early", "late"}
