"""The Python client's eval set and training areas against a live server; the training path end to end with
real worker processes: the web side's worker runs the contamination check (app role), the gpu worker the
preflight and the job (trainer role)."""

import hashlib
import json

import httpx
import pytest
from goldset_client import Conflict, Forbidden, Goldset, GoldsetError, WorkFailed

from annotate.services.tokens import api_token_create
from tests.api import training_world
from tests.training.worker import start_worker, stop_worker
from training.tinymodel import build_tiny_model


@pytest.fixture
def connect(live_server, transactional_db, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    clients = []

    def make(user, scope="admin"):
        _, token = api_token_create(user=user, name="client", scope=scope)
        gs = Goldset(live_server.url, token, progress=False)
        clients.append(gs)
        return gs

    yield make
    for gs in clients:
        gs.close()


def test_eval_sets_stream_download_verified_and_load_into_a_dataset(connect, project, alice, bob, admin_user, tmp_path):
    version = training_world.eval_version(project, [alice, bob], admin_user)
    gs = connect(admin_user, "read")
    assert [v["id"] for v in gs.evalsets.list(project="support")] == [version.pk]
    records = list(gs.evalsets.export(version.pk, "prompt-completion"))
    assert len(records) == 3 and set(records[0]) == {"prompt", "completion"}
    path = gs.evalsets.download(version.pk, "goldset", tmp_path / "out")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == version.sha256
    manifest = json.loads((tmp_path / "out" / "support-eval-v1.goldset.manifest.json").read_text())
    assert manifest["records"] == 3 and not list((tmp_path / "out").glob("*.partial"))
    dataset = gs.evalsets.to_dataset(version.pk, "prompt-completion", cache_dir=str(tmp_path / "hf"))
    assert dataset.num_rows == 3 and dataset[0]["completion"].startswith("The business plan")
    with pytest.raises(Forbidden):
        connect(alice, "read").evalsets.get(version.pk)


def test_a_download_that_does_not_match_its_manifest_is_removed_and_raises(tmp_path):
    manifest = {"file": "x.goldset.jsonl", "sha256": "0" * 64, "bytes": 3, "records": 1}

    def handler(request):
        if request.url.path.endswith("/manifest"):
            return httpx.Response(200, json=manifest)
        if request.url.path.endswith("/export/goldset"):
            return httpx.Response(200, content=b"{}\n")
        return httpx.Response(200, json={"sha256": "0" * 64})

    gs = Goldset("http://goldset.test", "gs_x", transport=httpx.MockTransport(handler), progress=False)
    with pytest.raises(GoldsetError, match="does not match its manifest"):
        gs.evalsets.download(1, "goldset", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_snapshot_audit_and_job_errors_reach_the_client_as_exceptions(connect, project, alice, bob, admin_user):
    training_world.approved_train_data(project)
    gs = connect(admin_user)
    snapshot = gs.snapshots.create("support v1", ["support"], note="from a script")
    assert snapshot["latest_audit"]["status"] == "succeeded" and snapshot["trainable"] is False
    assert gs.snapshots.audit(snapshot)["status"] == "succeeded"
    with pytest.raises(Conflict, match="contamination check"):
        gs.jobs.create(snapshot, "/models/tiny")
    with pytest.raises(Forbidden, match="needs admin"):
        connect(admin_user, "write").snapshots.create("x", ["support"])


@pytest.fixture
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.mark.postgres
@pytest.mark.training
def test_push_check_train_wait_and_download_an_adapter_with_real_workers(
    connect, project, alice, bob, admin_user, tiny_model, tmp_path, settings
):
    version = training_world.eval_version(project, [alice, bob], admin_user)
    training_world.approved_train_data(project)
    logs = {name: tmp_path / f"{name}.log" for name in ("web", "gpu")}
    web = start_worker(settings.ARTIFACTS_DIR, logs["web"], queues=("default",), env={"GOLDSET_DB_ALIAS": "default"})
    gpu = start_worker(settings.ARTIFACTS_DIR, logs["gpu"])
    try:
        gs = connect(admin_user)
        snapshot = gs.snapshots.create("support v1", ["support"])
        run = gs.snapshots.check_contamination(snapshot, timeout=180)
        assert run["verdict"]["passed"], run
        assert run["verdict"]["evalset_versions"][0]["sha256"] == version.sha256
        assert gs.snapshots.get(snapshot)["trainable"] is True

        with pytest.raises(WorkFailed) as refused:
            gs.jobs.create(snapshot, tiny_model, config={**training_world.FAST, "max_length": 10**6}, timeout=240)
        assert "max length" in str(refused.value)

        job = gs.jobs.create(snapshot, tiny_model, config=training_world.FAST, timeout=240, poll=0.5)
        assert job["status"] == "queued" and job["preflight"]["ok"]
        done = gs.jobs.wait(job, timeout=300, poll=1)
        assert done["status"] == "succeeded" and done["step"] == done["total_steps"] == 4
        assert [m["step"] for m in gs.jobs.metrics(done)] == [2, 4]
        adapter = gs.jobs.download(done, tmp_path / "adapter")
        manifest = json.loads((adapter / "manifest.json").read_text())
        assert manifest["snapshot"]["sha256"] == snapshot["sha256"]
        assert (adapter / "adapter_config.json").is_file()
        with pytest.raises(Conflict, match="nothing to cancel"):
            gs.jobs.cancel(done)
    finally:
        for proc in (web, gpu):
            stop_worker(proc)
    for name, path in logs.items():
        assert "Traceback" not in path.read_text(), (name, path.read_text()[-3000:])
