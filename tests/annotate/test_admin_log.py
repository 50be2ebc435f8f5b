"""The admin action log: every admin action that changes data leaves one row, in the same transaction as the
change; the rows cannot be changed by anyone the app logs in as; admins read them on a page."""

import pytest
from django.db import DatabaseError, connections, transaction

from annotate.models import AdminAction, ItemResult
from annotate.services import projects as project_services
from tests.factories import annotate, gold, make_item

pytestmark = pytest.mark.django_db


def _actions(since: int = 0):
    return list(AdminAction.objects.filter(id__gte=since).order_by("id").values_list("action", "actor_name"))


def test_member_changes_on_the_members_page_are_logged(client, project, admin_user, mallory, bob):
    since = AdminAction.objects.count() and AdminAction.objects.latest("id").id + 1
    client.force_login(admin_user)
    url = f"/projects/{project.slug}/members/"
    assert client.post(url, {"username": "mallory", "role": "adjudicator"}).status_code in {200, 302}
    assert client.post(f"{url}bob/remove/").status_code in {200, 302}
    assert _actions(since) == [("member_add", "ada"), ("member_role", "ada"), ("member_remove", "ada")]
    removal = AdminAction.objects.get(action="member_remove")
    assert removal.project == project and removal.details["username"] == "bob"
    assert removal.target == f"auth.User:{bob.pk}"


def test_a_refused_action_leaves_no_row(project, admin_user, mallory):
    from django.core.exceptions import ValidationError

    before = AdminAction.objects.count()
    with pytest.raises(ValidationError):
        project_services.project_member_remove(project=project, user=mallory, by=admin_user)  # not a member
    with pytest.raises(ValidationError):
        project_services.project_member_set(project=project, user=mallory, role="admin", by=admin_user)
    assert AdminAction.objects.count() == before


@pytest.fixture
def snapshot(admin_user):
    from training.models import SnapshotAudit, SnapshotCheck, TrainingSnapshot

    snapshot = TrainingSnapshot.objects.create(name="support v1", sha256="a" * 64)
    SnapshotCheck.objects.create(snapshot=snapshot, passed=True, threshold=0.5, evalset_versions=[])
    SnapshotAudit.objects.create(
        snapshot=snapshot,
        status="succeeded",
        report={"findings": [{"key": "k1", "gate": "block", "title": "Every answer ends with Thanks!"}]},
    )
    return snapshot


def test_freeze_snapshot_job_start_cancel_and_acknowledgement_are_logged(project, admin_user, alice, bob, snapshot):
    from evalsets.services import evalset_freeze
    from training import services as training_services
    from training.audits import audit_finding_acknowledge
    from training.models import TrainingJob
    from training.services import snapshot_create

    train = make_item(project, "gold", prompt="Train prompt")
    ItemResult.objects.create(item=train, kind="gold", status="consensus", payload=gold("write", "A train answer."))
    made = snapshot_create(name="support v2", projects=[project], created_by=admin_user, audit=False)

    audit = snapshot.audits.get()
    audit_finding_acknowledge(audit=audit, finding_key="k1", reason="A house style.", acknowledged_by=admin_user)
    failed = TrainingJob.objects.create(
        snapshot=snapshot, base_model="tiny", method="sft", config={}, status="failed", error="x"
    )
    job = training_services.training_job_retry(job=failed, created_by=admin_user)
    training_services.training_job_cancel(job=job, by=admin_user)
    item = make_item(project, "gold", prompt="Eval prompt", split="eval")
    answer = gold("write", "Eval answer.")
    for user in (alice, bob):
        annotate(item, user, answer)
    ItemResult.objects.create(
        item=item, kind="gold", status="consensus", payload=answer, agreement=1.0, reviewer_ids=[alice.pk, bob.pk]
    )
    version = evalset_freeze(project=project, user=admin_user, changelog="first").version

    log = {a.action: a for a in AdminAction.objects.exclude(action="member_add")}
    assert set(log) == {"evalset_freeze", "snapshot_create", "audit_acknowledge", "job_start", "job_cancel"}
    assert all(a.actor == admin_user and a.actor_name == "ada" for a in log.values())
    assert log["evalset_freeze"].target == f"evalsets.EvalSetVersion:{version.pk}"
    assert log["evalset_freeze"].details["sha256"] == version.sha256
    assert "Eval answer" not in str(log["evalset_freeze"].details) + log["evalset_freeze"].summary
    assert log["snapshot_create"].details["sha256"] == made.sha256
    assert log["job_start"].details["retry_of"] == failed.pk
    assert log["job_cancel"].target == f"training.TrainingJob:{job.pk}"
    assert log["audit_acknowledge"].details["reason"] == "A house style."


def test_the_log_refuses_update_and_delete(project, admin_user, mallory, write_once_enforced):
    project_services.project_member_set(project=project, user=mallory, by=admin_user)
    entry = AdminAction.objects.latest("id")
    with pytest.raises(DatabaseError, match="write-once|permission denied"), transaction.atomic():
        AdminAction.objects.filter(pk=entry.pk).update(summary="nothing happened")
    with pytest.raises(DatabaseError, match="write-once|permission denied"), transaction.atomic():
        AdminAction.objects.filter(pk=entry.pk).delete()
    entry.refresh_from_db()
    assert entry.summary.startswith("Added mallory")


def test_deleting_a_user_keeps_their_entries(project, admin_user, mallory, django_user_model):
    other = django_user_model.objects.create_user("temp-admin", password="x")
    project_services.project_member_set(project=project, user=mallory, by=other)
    other.delete()
    entry = AdminAction.objects.latest("id")
    assert entry.actor_name == "temp-admin" and entry.actor_id is not None


@pytest.mark.postgres
@pytest.mark.django_db(databases=["default", "training"])
def test_the_trainer_role_cannot_read_the_log(settings, project, admin_user, mallory):
    project_services.project_member_set(project=project, user=mallory, by=admin_user)
    trainer = connections["training"]
    with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic(using="training"):
        with trainer.cursor() as cursor:
            cursor.execute("SELECT summary FROM annotate_adminaction")
    trainer.close()


@pytest.mark.postgres
def test_the_app_role_cannot_switch_the_log_off(project):
    for sql in [
        "ALTER TABLE annotate_adminaction DISABLE TRIGGER ALL",
        "DROP TRIGGER annotate_adminaction_write_once_rows ON annotate_adminaction",
        "TRUNCATE annotate_adminaction",
    ]:
        with pytest.raises(DatabaseError), transaction.atomic(), connections["default"].cursor() as cursor:
            cursor.execute(sql)


def test_the_page_lists_the_log_for_admins_only_and_escapes_it(client, project, admin_user, alice, django_user_model):
    hostile = django_user_model.objects.create_user("<img src=x onerror=alert(1)>", password="x")
    project_services.project_member_set(project=project, user=hostile, role="reviewer", by=admin_user)
    client.force_login(admin_user)
    html = client.get("/admin-log/").content.decode()
    assert "Member added" in html and "Member&#x27;s role set" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert client.get("/admin-log/?action=member_role").content.decode().count("<tr>") == 2  # header and one row
    client.force_login(alice)
    assert client.get("/admin-log/").status_code == 403
