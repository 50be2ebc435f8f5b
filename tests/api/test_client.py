"""The Python client (client/goldset_client) against a live server: push a distilled dataset with provenance,
review it from a script, pull the agreed pairs back into a datasets.Dataset."""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from goldset_client import Forbidden, Goldset, ImportFailed, InvalidRequest

from annotate.models import Item
from annotate.services.tokens import api_token_create

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(live_server, transactional_db, project, admin_user, alice, bob, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    project.task_kinds, project.eval_share = ["preference", "gold"], 0
    project.save()

    def connect(user, scope=None):
        _, token = api_token_create(
            user=user, name="client", scope=scope or ("admin" if user == admin_user else "write")
        )
        return Goldset(live_server.url, token, progress=False)

    return connect


def distilled(n: int):
    for i in range(n):
        yield {
            "prompt": f"How do I reset my password? (case {i})",
            "chosen": f"Open Settings, then Security, then Reset (case {i}).",
            "rejected": "Call us.",
            "chosen_model": "teacher-70b",
            "rejected_model": "student-1b",
            "metadata": {"pipeline": "distill-v3", "teacher": "teacher-70b"},
        }


def test_push_review_and_pull_pairs_into_a_dataset(server, admin_user, alice, bob, tmp_path):
    admin = server(admin_user)
    result = admin.items.import_rows("support", distilled(6), provenance="distilled")
    assert result["status"] == "succeeded" and result["rows_imported"] == 6
    assert set(Item.objects.values_list("provenance", flat=True)) == {"distilled"}

    for reviewer in (alice, bob):
        gs = server(reviewer)
        answered = 0
        for task in gs.queue.tasks("support"):
            assert "teacher" not in json.dumps(task)  # blind: no model label, no metadata
            good = next(r["position"] for r in task["responses"] if r["text"].startswith("Open Settings"))
            gs.queue.submit(task, choice=good, strength="clear")
            answered += 1
        assert answered == 6

    records = list(admin.annotations.export("support", state=["consensus"]))
    assert len(records) == 6 and all(len(r["annotations"]) == 2 for r in records)
    dataset = admin.annotations.to_dataset("support", layout="preference", cache_dir=str(tmp_path / "hf"))
    assert dataset.num_rows == 6 and set(dataset.column_names) >= {"prompt", "chosen", "rejected"}
    assert all(row["chosen"].startswith("Open Settings") and row["rejected"] == "Call us." for row in dataset)
    report = admin.reports.agreement("support")
    assert report["n_annotations"] == 12


def test_a_bad_file_raises_one_error_listing_every_bad_line(server, admin_user, tmp_path):
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps({"prompt": "ok", "response": "fine"})] + ['{"prompt": ""}'] * 3 + ["not json"]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImportFailed) as failed:
        server(admin_user).items.import_file("support", path)
    assert [e["line"] for e in failed.value.errors] == [2, 3, 4, 5]
    message = str(failed.value)
    assert all(f"line {n}:" in message for n in (2, 3, 4, 5)) and not Item.objects.exists()


def test_a_csv_file_streams_up_from_disk(server, admin_user, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("prompt,response\n" + "".join(f"q{i},a{i}\n" for i in range(50)))
    assert server(admin_user).items.import_file("support", path, mode="skip_bad")["rows_imported"] == 50


def test_errors_arrive_as_typed_exceptions(server, alice):
    gs = server(alice, "read")
    with pytest.raises(Forbidden, match="needs write"):
        gs.queue.next("support")
    with pytest.raises(InvalidRequest) as invalid:
        server(alice).items.list("support", split="sideways").__next__()
    assert invalid.value.errors[0]["field"] == "split"


def test_retries_429_and_503_with_backoff_honouring_retry_after():
    answers = [
        httpx.Response(503),
        httpx.Response(429, headers={"Retry-After": "3"}),
        httpx.Response(200, json={"username": "x"}),
    ]
    seen = []

    def handler(request):
        seen.append(request)
        return answers[len(seen) - 1]

    gs = Goldset("http://goldset.test", "gs_x", transport=httpx.MockTransport(handler), progress=False)
    waits = []
    gs._http.sleep = waits.append
    assert gs.me() == {"username": "x"}
    assert len(seen) == 3 and waits[1] == 3.0 and 0 < waits[0] <= 0.5
    assert seen[0].headers["Authorization"] == "Bearer gs_x"


def test_the_client_needs_no_django():
    code = "import sys, goldset_client; assert not [m for m in sys.modules if m.split('.')[0] == 'django']"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT / "client", check=True)


def test_jsonl_records_survive_any_split_of_the_stream():
    """Lines cut anywhere by the network, blank lines, CRLF, non-ASCII text split inside a character, and a
    number orjson does not take (beyond 64 bits) all parse as the standard library parses them."""
    records = [{"prompt": "Ça va? — ünïcödé", "n": i, "big": 2**70 if i == 3 else i} for i in range(7)]
    body = b"".join(
        json.dumps(r, ensure_ascii=False).encode() + (b"\r\n" if i % 2 else b"\n\n") for i, r in enumerate(records)
    )
    for size in (1, 2, 3, 7, 64, len(body)):
        chunks = [body[i : i + size] for i in range(0, len(body), size)]

        def handler(request, chunks=chunks):
            return httpx.Response(200, stream=_Chunks(chunks))

        gs = Goldset("http://goldset.test", "gs_x", transport=httpx.MockTransport(handler), progress=False)
        assert list(gs.annotations.export("p")) == records, size


class _Chunks(httpx.SyncByteStream):
    def __init__(self, chunks):
        self.chunks = chunks

    def __iter__(self):
        yield from self.chunks
