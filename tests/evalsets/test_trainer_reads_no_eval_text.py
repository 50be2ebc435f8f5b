"""Nothing the trainer role can read holds eval text.

Logged in as the trainer role, the test asks the catalog for every table, view, sequence and column it
may SELECT, in every schema (pg_catalog's views such as pg_stats included, after an ANALYZE), reads
all of it, and calls every function it may EXECUTE beyond PostgreSQL's own. It then looks for each eval
record's text (prompt, chat turns, reference, response, chosen, rejected) and for every 13-word run of
it. Runs that also occur in the training data are not leaks: the trainer reads training data by design,
and a contaminated snapshot holds copies of eval text, which is exactly what the check blocks. The
privileges are enumerated here, not listed, so a grant added later is read too.
"""

import json
import random
import re

import pytest
from django.db import connections, transaction

from tests.evalsets.conftest import gold_payload, preference_payload, rubric_payload

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True, databases="__all__")]

N = 13
WORDS = re.compile(r"[a-z0-9]+")
ESCAPES = re.compile(r"\\+[nrt]")
VOCABULARY = WORDS.findall(
    """
    refund parcel courier invoice warranty voucher account password billing shipping return order window
    thirty days express standard tracking label customs duty receipt manager escalate policy replacement
    damaged missing late address postcode subscription cancel renew discount coupon loyalty points
    balance statement charge dispute chargeback confirm verify identity email
    """
)


def tokens(text: str) -> list[str]:
    return WORDS.findall(ESCAPES.sub(" ", text.lower()))


def ngrams(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + N]) for i in range(len(words) - N + 1)}


def sentence(rng: random.Random, tag: str, length: int = 30) -> str:
    return f"{tag} " + " ".join(rng.choice(VOCABULARY) for _ in range(length)) + "."


def strings_in(value) -> list[str]:
    """The value as text, and every string inside it when it is JSON (so escapes cannot hide words)."""
    if value is None:
        return []
    text = str(value)
    found = [text]
    try:
        parsed = json.loads(text)
    except (ValueError, TypeError):
        return found

    def walk(v):
        if isinstance(v, str):
            found.append(v)
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(k)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(parsed)
    return found


class Leaks:
    """Looks for eval text in values: any of its 13-grams, or the whole text when shorter than 13 words."""

    def __init__(self, eval_texts: dict[str, str], training_texts: list[str]):
        allowed = set()
        for text in training_texts:
            allowed |= ngrams(tokens(text))
        self.grams: dict[tuple[str, ...], str] = {}
        self.short: dict[tuple[str, ...], str] = {}
        for label, text in eval_texts.items():
            words = tokens(text)
            if len(words) < N and not any(" ".join(words) in " ".join(tokens(t)) for t in training_texts):
                self.short[tuple(words)] = label
            for gram in ngrams(words) - allowed:
                self.grams.setdefault(gram, label)
        self.found: list[str] = []

    def scan(self, where: str, value) -> None:
        for text in strings_in(value):
            words = tokens(text)
            hit = next((self.grams[g] for g in ngrams(words) if g in self.grams), None)
            if hit is None:
                joined = f" {' '.join(words)} "
                hit = next((label for s, label in self.short.items() if f" {' '.join(s)} " in joined), None)
            if hit is not None:
                self.found.append(f"{where}: text of {hit}")
                return


def readable_relations(cursor) -> list[tuple[str, str, list[str]]]:
    """(schema, relation, [columns]) for everything the current role may SELECT, from the catalog."""
    cursor.execute(
        """
        SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
          AND pg_catalog.has_schema_privilege(n.oid, 'USAGE')
          AND (pg_catalog.has_table_privilege(c.oid, 'SELECT') OR pg_catalog.has_any_column_privilege(c.oid, 'SELECT'))
        ORDER BY n.nspname, c.relname
        """
    )
    relations = []
    for oid, schema, name in cursor.fetchall():
        cursor.execute(
            "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped "
            "AND pg_catalog.has_column_privilege(attrelid, attnum, 'SELECT') ORDER BY attnum",
            [oid],
        )
        columns = [row[0] for row in cursor.fetchall()]
        if columns:
            relations.append((schema, name, columns))
    return relations


def read_everything(alias: str, leaks: Leaks, *, only=None) -> list[str]:
    """Scan every readable relation through ``alias``; return the relations read."""
    connection = connections[alias]
    read, errors = [], []
    with connection.cursor() as cursor:
        relations = readable_relations(cursor)
    for schema, name, columns in relations:
        if only and not (schema in only or f"{schema}.{name}" in only):
            continue
        q = connection.ops.quote_name
        select = ", ".join(f"{q(c)}::text" for c in columns)
        try:
            with transaction.atomic(using=alias), connection.cursor() as cursor:
                cursor.execute(f"SELECT {select} FROM {q(schema)}.{q(name)}")
                rows = cursor.fetchall()
        except Exception as exc:  # noqa: BLE001 — every unreadable relation is reported below
            errors.append(f"{schema}.{name}: {exc}")
            continue
        read.append(f"{schema}.{name}")
        for row in rows:
            for column, value in zip(columns, row, strict=True):
                leaks.scan(f"{schema}.{name}.{column}", value)
    assert not errors, f"relations the catalog says {alias} may read, but reading failed: {errors}"
    return read


@pytest.fixture
def contaminated(make_item, freeze, admin_user, alice, monkeypatch, settings, tmp_path):
    """Eval records with long, distinctive texts of every kind; two snapshots that copy parts of them;
    their failing contamination checks with pairs; a verification; a job with progress; two generation
    runs whose model parrots the eval prompts and references, a blind comparison of them, and queues of the
    tuned run against the reference answers and under the project's rubric."""
    from evalsets.models import ContaminationReport, EvalRecord
    from evalsets.services import evalsets_verify, snapshot_contamination_check
    from training import services
    from training.audits import snapshot_audit_request
    from training.models import SnapshotRecord, TrainingSnapshot
    from training.tasks import training_job_run

    rng = random.Random(10)
    for i in range(6):
        make_item("gold", prompt=sentence(rng, f"gold{i}"), payload=gold_payload(sentence(rng, f"answer{i}")))
    for i in range(3):
        responses = [{"text": sentence(rng, f"chosen{i}"), "model": "a"}, {"text": sentence(rng, f"rejected{i}")}]
        make_item("preference", prompt=sentence(rng, f"pair{i}"), responses=responses, payload=preference_payload())
    make_item(
        "rubric",
        prompt=sentence(rng, "rubric"),
        responses=[{"text": sentence(rng, "scored"), "model": "a"}],
        payload=rubric_payload({"helpful": 4}),
    )
    turn = sentence(rng, "turn")
    make_item(
        "gold",
        prompt=turn,
        messages=[{"role": "system", "content": sentence(rng, "system")}, {"role": "user", "content": turn}],
        payload=gold_payload(sentence(rng, "chat")),
    )
    version = freeze().version
    records = list(EvalRecord.objects.filter(version=version).order_by("position"))
    gold = [r for r in records if r.reference]
    chosen = next(r for r in records if r.chosen)

    def snapshot(name: str, texts: list[tuple[str, str]]) -> TrainingSnapshot:
        snap = TrainingSnapshot.objects.create(name=name, sha256=name.encode().hex().ljust(64, "0"))
        for position, (prompt, completion) in enumerate(texts):
            SnapshotRecord.objects.create(
                snapshot=snap,
                position=position,
                kind="sft",
                messages=[{"role": "user", "content": prompt}],
                completion=completion,
                source_item_id=9000 + position,
                content_hash=f"{position:064d}",
            )
        return snap

    def head(text: str, share: float) -> str:
        words = text.split()
        return " ".join(words[: int(len(words) * share)])

    # Truncated copies: the checks flag them, and each pair quotes the whole eval text, tail included.
    first = snapshot("s1", [(head(gold[0].prompt, 0.6), head(gold[0].reference, 0.6)), ("unrelated", "fine")])
    second = snapshot("s2", [(head(gold[1].prompt, 0.7), head(chosen.chosen, 0.6)), ("other", "text")])
    checks = [snapshot_contamination_check(snapshot=s) for s in (first, second)]
    assert not any(c.passed for c in checks)
    assert all(ContaminationReport.objects.get(snapshot_check=c).pairs for c in checks)
    evalsets_verify()

    monkeypatch.setattr(training_job_run, "apply_async", lambda *a, **kw: None)
    snapshot_audit_request(snapshot=first, created_by=admin_user)  # a job starts only on an audited snapshot
    config = services.training_config_parse(method="sft", config={})
    job = services._job_insert(snapshot=first, base_model="m", config=config, created_by=admin_user, preflight={})
    services.training_job_claim(job_id=job.pk, secret=job.worker_secret, worker="gpu", using="training")
    row = {"phase": "sft", "step": 1, "total_steps": 1, "epoch": 1.0, "loss": 1.0}
    services.training_job_progress_add(job_id=job.pk, secret=job.worker_secret, row=row, using="training")

    # Generation runs, written as the gpu worker writes them (as the trainer role). Their outputs repeat eval
    # text, as a model may: the trainer role must read none of it.
    from evalsets.judging.generate import DecodingConfig
    from evalsets.judging.services import runs as generation
    from evalsets.judging.services.comparisons import comparison_create

    settings.ARTIFACTS_DIR = tmp_path
    generation_runs = []
    for label in ("base", "tuned"):
        run = generation.generation_run_start(
            label=label, decoding=DecodingConfig(), created_by=admin_user, version=version, base_model="m"
        )
        secret = run.worker_secret
        generation.generation_run_claim(run_id=run.pk, secret=secret, worker="gpu", using="training")
        rows = [
            {
                "position": i,
                "record_id": r.pk,
                "check_key": "",
                "text": f"{label}: {r.prompt} {r.reference or r.chosen}",
                "new_tokens": 9,
                "finish_reason": "eos",
            }
            for i, r in enumerate(records)
        ]
        generation.generation_outputs_add(run_id=run.pk, secret=secret, rows=rows, using="training")
        generation.generation_run_update(run_id=run.pk, secret=secret, using="training", message="answering")
        generation.generation_run_finish(run_id=run.pk, secret=secret, status="succeeded", using="training")
        generation_runs.append(run)
    comparison_create(
        name="tuned vs base",
        run_a=generation_runs[0],
        run_b=generation_runs[1],
        reviewers=[alice],
        overlap_k=1,
        seed=1,
        created_by=admin_user,
    )
    # The single-run modes: the tuned run against the reference answers (its items carry them), and its responses
    # scored under the eval set project's active rubric.
    from annotate.models import Item, Rubric, RubricVersion

    rubric = Rubric.objects.create(project=version.project, name="Quality")
    criterion = {"key": "helpful", "name": "Helpful", "scale": "ordinal"}
    criterion["levels"] = [{"value": v, "label": str(v), "description": f"level {v}"} for v in (1, 2, 3)]
    RubricVersion.objects.create(rubric=rubric, number=1, status="active", criteria=[criterion])
    for mode in ("reference", "rubric"):
        queue = comparison_create(
            name=f"tuned, {mode}",
            mode=mode,
            run_a=generation_runs[1],
            reviewers=[alice],
            overlap_k=1,
            seed=1,
            created_by=admin_user,
        )
        if mode == "reference":
            shown = {r["text"] for item in Item.objects.filter(project=queue.project) for r in item.responses}
            assert {r.reference for r in gold} <= shown
    run_c = generation.generation_run_start(
        label="c", decoding=DecodingConfig(), created_by=admin_user, version=version, base_model="m"
    )

    with connections["owner"].cursor() as cursor:  # pg_stats shows what ANALYZE sampled
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r'"
        )
        for (table,) in cursor.fetchall():
            cursor.execute(f'ANALYZE "{table}"')

    eval_texts = {}
    for r in records:
        for name in ("prompt", "reference", "response", "chosen", "rejected"):
            if getattr(r, name):
                eval_texts[f"eval record {r.pk} {name}"] = getattr(r, name)
        for i, turn in enumerate(r.messages or []):
            eval_texts[f"eval record {r.pk} chat turn {i}"] = turn["content"]
    training = [
        t for s in (first, second) for rec in s.records.all() for t in (rec.messages[0]["content"], rec.completion)
    ]
    return {"eval_texts": eval_texts, "training": training, "job": job, "run": run_c}


def test_no_table_view_column_or_function_the_trainer_role_can_read_holds_eval_text(contaminated):
    leaks = Leaks(contaminated["eval_texts"], contaminated["training"])
    assert len(leaks.grams) > 200  # most eval text is in no training record

    with connections["training"].cursor() as cursor:
        cursor.execute("SELECT current_user")
        from django.conf import settings

        assert cursor.fetchone()[0] == settings.TRAINER_ROLE
    read = read_everything("training", leaks)
    # The enumeration reached the training side, the catalog and its statistics.
    assert {"public.training_snapshotcheck", "public.training_trainingjob", "pg_catalog.pg_stats"} <= set(read)
    assert not any(r.startswith("public.evalsets_") for r in read)
    assert "public.judging_generationrun" in read and "public.judging_generationoutput" not in read

    with connections["training"].cursor() as cursor:
        cursor.execute(
            """
            SELECT n.nspname, p.proname, p.prorettype::regtype::text, p.proretset
            FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
            WHERE pg_catalog.has_function_privilege(p.oid, 'EXECUTE')
              AND pg_catalog.has_schema_privilege(n.oid, 'USAGE')
              AND (p.prosecdef OR n.nspname NOT IN ('pg_catalog', 'information_schema'))
            ORDER BY 1, 2
            """
        )
        functions = cursor.fetchall()
    # PostgreSQL's own functions run with the caller's privileges; anything else the trainer may call is
    # one of the job-write functions, which answer only yes or no.
    from config.dbroles import worker_function_signatures
    from evalsets.judging import dbfunctions as run_functions
    from training import dbfunctions

    assert {(s, name) for s, name, _, _ in functions} == {("public", name) for name in worker_function_signatures()}
    assert all(rettype == "boolean" and not retset for _, _, rettype, retset in functions)
    job, secret = contaminated["job"], contaminated["job"].worker_secret
    calls = {
        dbfunctions.CLAIM: ("%s, %s, %s", [job.pk, secret, "gpu"]),
        dbfunctions.UPDATE: ("%s, %s, '{}'::jsonb", [job.pk, secret]),
        dbfunctions.PROGRESS: ('%s, %s, \'{"phase": "sft", "step": 2, "total_steps": 2}\'::jsonb', [job.pk, secret]),
        dbfunctions.FINISH: ("%s, %s, 'failed', 'stopped by the test', '{}'::jsonb", [job.pk, secret]),
    }
    run, run_secret = contaminated["run"], contaminated["run"].worker_secret
    calls |= {
        run_functions.CLAIM: ("%s, %s, %s", [run.pk, run_secret, "gpu"]),
        run_functions.UPDATE: ("%s, %s, '{}'::jsonb", [run.pk, run_secret]),
        run_functions.OUTPUTS: ("%s, %s, '[]'::jsonb", [run.pk, run_secret]),
        run_functions.FINISH: ("%s, %s, 'failed', 'stopped by the test', '{}'::jsonb", [run.pk, run_secret]),
    }
    for name, (args, params) in calls.items():
        with connections["training"].cursor() as cursor:
            cursor.execute(f"SELECT {name}({args})", params)
            leaks.scan(f"function {name}", cursor.fetchone()[0])

    assert not leaks.found, "the trainer role can read eval text:\n" + "\n".join(leaks.found[:20])


def test_the_scan_finds_eval_text_where_it_is(contaminated):
    """The same scan, run as the app role (which may read eval tables and so their statistics), finds the
    eval text in the tables and in pg_stats: the scan can fail."""
    leaks = Leaks(contaminated["eval_texts"], contaminated["training"])
    read_everything("default", leaks, only={"public", "pg_catalog.pg_stats"})
    where = {f.split(":")[0].rsplit(".", 1)[0] for f in leaks.found}
    assert {
        "public.evalsets_evalrecord",
        "public.evalsets_contaminationreport",
        "public.judging_generationoutput",
        "public.annotate_item",
        "pg_catalog.pg_stats",
    } <= where


def test_a_checks_training_side_keeps_counts_and_training_record_ids_only(contaminated):
    from evalsets.models import ContaminationReport
    from training.models import SnapshotCheck, SnapshotRecord

    for check in SnapshotCheck.objects.all():
        assert "pairs" not in check.report
        pairs = ContaminationReport.objects.get(snapshot_check=check).pairs
        ids = sorted({p["train"]["record_id"] for p in pairs})
        assert check.report["offending_train_record_ids"] == ids
        assert set(SnapshotRecord.objects.filter(pk__in=ids).values_list("snapshot_id", flat=True)) == {
            check.snapshot_id
        }
