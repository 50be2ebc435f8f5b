"""The model card of an adapter: snapshot, audit findings and acknowledgements, contamination check, config,
metrics, blind comparison results, regression and artifact links; exported as a Hub README."""

import pytest

from training.models import TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def carded_job(adapter_job, eval_version, admin_user, alice, bob, settings, tmp_path):
    from evalsets.judging.services.comparisons import comparison_create
    from tests.judging.test_comparison import finished_run

    settings.ARTIFACTS_DIR = tmp_path
    audit = {
        "id": 7,
        "findings": [
            {
                "key": "closing:thanks",
                "type": "closing",
                "title": "37% of answers end with 'Thanks!'",
                "share": 0.37,
                "lift": 4.1,
                "gate": "block",
            },
            {
                "key": "length:short",
                "type": "length",
                "title": "Short answers",
                "share": 0.1,
                "lift": 1.5,
                "gate": "warn",
            },
        ],
        "acknowledgements": [
            {"finding": "closing:thanks", "reason": "House style asks for it.", "by": "ada", "at": "2026-11-30"}
        ],
    }
    manifest = {
        **adapter_job.manifest,
        "metrics": {"sft": {"train_loss": 1.234, "tokens_per_second": 812.5}},
        "library_versions": {"peft": "0.21.2", "transformers": "5.24.0"},
    }
    TrainingJob.objects.filter(pk=adapter_job.pk).update(audit=audit, manifest=manifest)
    adapter_job.refresh_from_db()
    base = finished_run(eval_version, admin_user, label="base", base_model="m")
    tuned = finished_run(eval_version, admin_user, label="support v1", job=adapter_job)
    comparison_create(
        name="support v1 vs base",
        run_a=base,
        run_b=tuned,
        reviewers=[alice, bob],
        overlap_k=2,
        seed=0,
        created_by=admin_user,
    )
    return adapter_job


def test_the_card_gathers_provenance_checks_and_results(client, admin_user, carded_job):
    client.force_login(admin_user)
    page = client.get(f"/judging/models/{carded_job.pk}/").content.decode()
    for text in (
        "support v1",  # the snapshot
        carded_job.snapshot.sha256,
        "37% of answers end with &#x27;Thanks!&#x27;",
        "Acknowledged by ada: House style asks for it.",
        # The contamination check: the latest one, failed because an eval version was frozen after the check.
        'class="badge bad">failed</span>',
        "support v1 vs base",
        "No judgements yet of support v1 against base",
        "lora_r",
        "train_loss",
        f"/training/jobs/{carded_job.pk}/adapter.zip",
        f"/judging/models/{carded_job.pk}/README.md",
        "Not run yet.",  # regression
    ):
        assert text in page, text


def test_the_markdown_export_has_the_hub_layout(client, admin_user, carded_job):
    client.force_login(admin_user)
    response = client.get(f"/judging/models/{carded_job.pk}/README.md")
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    text = response.content.decode()
    head, body = text.split("---\n", 2)[1:]
    assert head.splitlines() == [
        f'base_model: "{carded_job.base_model}"',
        "library_name: peft",
        "tags:",
        "- goldset",
        "- peft",
        "- lora",
        "- sft",
        "- qlora",
    ]
    sections = [line for line in body.splitlines() if line.startswith("#")]
    assert sections == [
        f"# goldset-job-{carded_job.pk}-sft",
        "## Model details",
        "## Training data",
        "### Audit 7",
        "### Contamination check",
        "## Evaluation",
        "### Blind human comparisons",
        "### Capability regression",
        "## Training procedure",
        "### Metrics",
        "### Framework versions",
    ]
    assert "- **block** 37% of answers end with 'Thanks!' (share 37.0%). Acknowledged by ada: House style asks" in body
    assert "| support v1 vs base | pairwise | No judgements yet of support v1 against base" in body
    assert "| sft.train_loss | 1.234 |" in body and "- peft 0.21.2" in body


def test_only_admins_see_model_cards(client, alice, carded_job):
    client.force_login(alice)
    assert client.get(f"/judging/models/{carded_job.pk}/").status_code == 403
    assert client.get(f"/judging/models/{carded_job.pk}/README.md").status_code == 403
