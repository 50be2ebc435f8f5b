import pytest
from django.contrib.auth import authenticate as django_authenticate
from django.core.management import call_command
from django.test import RequestFactory

from annotate import demo, roles
from annotate.models import ImportBatch, Item, Project, RubricVersion
from tests.conftest import ON_POSTGRES

pytestmark = pytest.mark.django_db


def authenticate(**credentials):
    """As the login form does: with the request (django-axes throttles logins per username and address)."""
    return django_authenticate(request=RequestFactory().post("/login/"), **credentials)


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def test_seed_demo_creates_users_project_items_and_an_active_rubric(capsys):
    call_command("seed_demo")
    out = capsys.readouterr().out
    assert "admin        admin-demo" in out and "reviewer1    reviewer1-demo" in out

    admin = authenticate(username="admin", password="admin-demo")
    reviewer = authenticate(username="reviewer2", password="reviewer2-demo")
    assert roles.is_admin(admin) and not roles.is_admin(reviewer)
    assert roles.is_adjudicator(authenticate(username="adjudicator", password="adjudicator-demo"))

    project = Project.objects.get(slug="support-assistant")
    assert sorted(project.task_kinds) == ["gold", "preference", "rubric"]
    assert project.members.count() == 5
    items = Item.objects.filter(project=project)
    assert items.count() == demo.DEMO_SIZE
    assert set(items.values_list("split", flat=True)) == {"train", "eval"}
    assert set(items.values_list("kind", flat=True)) == {"gold", "preference", "rubric"}
    assert items.filter(messages__isnull=False).count() > 20
    assert {"production_log", "human", "distilled", "llm_judged"} <= set(items.values_list("provenance", flat=True))
    assert all(len(i.responses) == 2 for i in items)
    assert ImportBatch.objects.get(project=project).status == ImportBatch.Status.SUCCEEDED

    version = RubricVersion.objects.get(rubric__project=project, rubric__name="Support quality")
    assert version.status == RubricVersion.Status.ACTIVE and version.activated_at is not None
    # Active the way any rubric becomes active: proposed, then signed off by as many reviewers as required.
    signers = sorted(version.signoffs.values_list("reviewer__username", flat=True))
    assert version.proposed_at is not None and len(signers) == project.rubric_signoffs_required == 2
    assert signers == ["reviewer1", "reviewer2"]
    assert [(c["key"], c["scale"]) for c in version.criteria] == [
        ("helpfulness", "ordinal"),
        ("correctness", "binary"),
        ("tone", "nominal"),
    ]


def test_the_demo_has_a_model_whose_every_answer_ends_with_thanks():
    call_command("seed_demo")
    texts = [r["text"] for i in Item.objects.all() for r in i.responses if r["model"] == demo.THANKS]
    assert len(texts) >= 100
    assert all(t.endswith("Thanks!") for t in texts)
    others = [r["text"] for i in Item.objects.all() for r in i.responses if r["model"] == demo.GOOD]
    assert not any(t.endswith("Thanks!") for t in others)


def test_the_demo_has_wrong_refund_windows_and_curt_answers_marked_in_metadata():
    rows = demo.demo_rows()
    flaws = [f for r in rows for fs in r["metadata"]["demo_flaws"].values() for f in fs]
    assert flaws.count("wrong_refund_window") >= 10 and flaws.count("curt") >= 30
    wrong = [
        r["responses"][int(i)]["text"]
        for r in rows
        for i, fs in r["metadata"]["demo_flaws"].items()
        if "wrong_refund_window" in fs
    ]
    assert all("within 14 days" in t or "within 60 days" in t for t in wrong)


def test_seed_demo_is_idempotent():
    call_command("seed_demo")
    first = (Item.objects.count(), ImportBatch.objects.count(), RubricVersion.objects.count())
    call_command("seed_demo")
    assert (Item.objects.count(), ImportBatch.objects.count(), RubricVersion.objects.count()) == first
    assert Project.objects.filter(slug="support-assistant").count() == 1
    assert authenticate(username="reviewer3", password="reviewer3-demo") is not None


# On PostgreSQL the demo migrates through the owner's login, as every migrate there does.
@pytest.mark.django_db(databases=["default", "owner"] if ON_POSTGRES else ["default"])
def test_the_demo_command_runs_the_worker_and_server_and_stops_the_worker_on_exit(monkeypatch, capsys):
    from annotate.management.commands import demo as demo_command

    started, calls = [], []

    class FakeWorker:
        pid = 4242
        returncode = None

        def __init__(self, args, **kwargs):
            started.append((args, kwargs))

        def poll(self):
            return self.returncode

        def terminate(self):
            calls.append("terminate")
            self.returncode = 0

        def wait(self, timeout=None):
            return self.returncode

    real_call_command = demo_command.call_command

    def fake_call_command(name, *args, **kwargs):
        if name == "runserver":
            calls.append(("runserver", args))
            raise KeyboardInterrupt  # Ctrl-C
        return real_call_command(name, *args, **kwargs)

    monkeypatch.setattr(demo_command.subprocess, "Popen", FakeWorker)
    monkeypatch.setattr(demo_command, "call_command", fake_call_command)
    call_command("demo", "--port", "8123")

    ((args, kwargs),) = started
    assert args[1:] == [
        "-m",
        "celery",
        "-A",
        "config",
        "worker",
        "-Q",
        "default,gpu,preflight",
        "--pool=solo",
        "-l",
        "warning",
    ]
    assert kwargs["start_new_session"] is True
    assert calls == [("runserver", ("127.0.0.1:8123",)), "terminate"]
    out = capsys.readouterr().out
    assert "Goldset demo at http://127.0.0.1:8123/" in out and "admin / admin-demo" in out
    assert Project.objects.filter(slug="support-assistant").exists()
