"""The written-out hot reads load exactly what the ORM would, and the session and user reads keep Django's rules."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.forms.models import model_to_dict
from django.utils import timezone

from annotate.models import Item, Lease
from annotate.selectors import leases_active_for_reviewer, project_get_for_user
from annotate.services import queue
from config import rawsql
from config.auth import ModelBackend
from config.sessions import SessionStore

pytestmark = pytest.mark.django_db


def _fields(instance) -> dict:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}


def test_leases_with_items_load_the_same_values_as_the_orm(project, alice):
    Item.objects.create(
        project=project,
        kind="preference",
        prompt="Which is kinder?",
        messages=[{"role": "user", "content": "Hi"}],
        responses=[{"text": "a", "model": "m1"}, {"text": "b"}],
        metadata={"topic": "refunds", "n": 3, "nested": {"ok": True}},
        content_hash="h-raw",
        split="eval",
    )
    lease = queue.lease_next_for_reviewer(project=project, reviewer=alice)
    (loaded,) = leases_active_for_reviewer(project=project, reviewer=alice)
    orm = Lease.objects.select_related("item").get(pk=lease.pk)
    assert _fields(loaded) == _fields(orm)
    assert _fields(loaded.item) == _fields(orm.item)
    # Types, not just equality: JSON is decoded, datetimes are aware, booleans are booleans (SQLite stores 0/1).
    assert isinstance(loaded.item.metadata, dict) and loaded.item.metadata["nested"] == {"ok": True}
    assert loaded.expires_at.tzinfo is not None
    assert loaded.item.is_calibration is False
    assert loaded._state.adding is False and loaded._state.db == "default"


def test_only_the_reviewers_unexpired_active_leases_come_back_in_order(project, alice, bob):
    for n in range(3):
        Item.objects.create(project=project, kind="gold", prompt=f"P{n}", content_hash=f"o{n}", split="train")
    first = queue.lease_next_for_reviewer(project=project, reviewer=alice)
    second = queue.lease_next_for_reviewer(project=project, reviewer=alice)
    queue.lease_next_for_reviewer(project=project, reviewer=bob)
    assert [lease.pk for lease in leases_active_for_reviewer(project=project, reviewer=alice)] == [
        first.pk,
        second.pk,
    ]
    Lease.objects.filter(pk=first.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert [lease.pk for lease in leases_active_for_reviewer(project=project, reviewer=alice)] == [second.pk]


def test_a_project_is_found_for_its_members_only(project, alice, mallory):
    found = project_get_for_user(user=alice, slug=project.slug)
    assert model_to_dict(found) == model_to_dict(type(project).objects.get(pk=project.pk))
    from django.http import Http404

    with pytest.raises(Http404):
        project_get_for_user(user=mallory, slug=project.slug)
    with pytest.raises(Http404):
        project_get_for_user(user=alice, slug="no-such-project")


def test_a_live_session_loads_and_an_expired_one_does_not():
    store = SessionStore()
    store["who"] = "alice"
    store.create()
    assert SessionStore(session_key=store.session_key)["who"] == "alice"
    Session.objects.filter(session_key=store.session_key).update(expire_date=timezone.now() - timedelta(seconds=1))
    expired = SessionStore(session_key=store.session_key)
    assert expired.get("who") is None
    assert expired.session_key is None  # a new session will be created, as Django's own store does


def test_the_backend_returns_active_users_only_and_refuses_bad_ids(alice):
    backend = ModelBackend()
    assert _fields(backend.get_user(str(alice.pk))) == _fields(get_user_model().objects.get(pk=alice.pk))
    assert backend.get_user("not-a-number") is None
    assert backend.get_user(10**9) is None
    alice.is_active = False
    alice.save()
    assert backend.get_user(alice.pk) is None


def test_a_login_through_the_form_uses_these_reads(client, alice):
    alice.set_password("a-long-password-1")
    alice.save()
    response = client.post("/login/", {"username": alice.username, "password": "a-long-password-1"})
    assert response.status_code == 302
    assert client.session["_auth_user_backend"] == "config.auth.ModelBackend"
    assert client.get("/").status_code == 200


def test_column_lists_follow_the_models_fields():
    assert rawsql.width(Lease) == len(Lease._meta.concrete_fields)
    assert rawsql.columns(Lease, "l").count("l.") == rawsql.width(Lease)


def test_insert_stores_what_save_would_and_sets_the_pk(project, alice):
    item = Item.objects.create(project=project, kind="gold", prompt="p", responses=[], content_hash="h-ins")
    expires = timezone.now() + timedelta(minutes=5)
    written = rawsql.insert(Lease(project=project, item=item, reviewer=alice, display_order=[1, 0], expires_at=expires))
    assert written.pk is not None and not written._state.adding
    stored = Lease.objects.get(pk=written.pk)
    assert _fields(stored) == _fields(written)  # the auto_now fields were set on the instance, as by save()
    assert stored.status == "active" and stored.display_order == [1, 0] and stored.created_at is not None


def test_update_writes_only_the_named_fields_and_refreshes_auto_now(project, alice):
    item = Item.objects.create(project=project, kind="gold", prompt="p", responses=[], content_hash="h-upd")
    lease = Lease.objects.create(
        project=project, item=item, reviewer=alice, display_order=[0], expires_at=timezone.now() + timedelta(minutes=5)
    )
    before = Lease.objects.get(pk=lease.pk)
    lease.status, lease.submitted_at, lease.display_order = "submitted", timezone.now(), [9]
    rawsql.update(lease, ["status", "submitted_at", "updated_at"])
    after = Lease.objects.get(pk=lease.pk)
    assert after.status == "submitted" and after.submitted_at == lease.submitted_at
    assert after.display_order == [0]  # not named: untouched
    assert after.updated_at > before.updated_at and after.updated_at == lease.updated_at


@pytest.mark.postgres
def test_the_hot_reads_are_prepared_once_per_connection_on_postgresql(project, alice):
    from django.db import connection

    Item.objects.create(project=project, kind="gold", prompt="p", responses=[], content_hash="h-prep")
    queue.lease_next_for_reviewer(project=project, reviewer=alice)
    for _ in range(6):  # psycopg prepares a statement on its fifth run on a connection
        leases_active_for_reviewer(project=project, reviewer=alice)
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any('FROM "annotate_lease" l JOIN "annotate_item" i' in sql for sql in prepared), prepared


def test_the_project_and_queue_read_matches_the_two_reads_it_replaces(project, alice, bob, mallory, admin_user):
    from django.http import Http404

    from annotate.selectors import project_and_queue_for_user

    found, leases = project_and_queue_for_user(user=alice, slug=project.slug)
    assert model_to_dict(found) == model_to_dict(project_get_for_user(user=alice, slug=project.slug))
    assert leases == []  # a member with nothing leased: the outer join's empty side is not a lease
    for n in range(3):
        Item.objects.create(project=project, kind="gold", prompt=f"p{n}", responses=[], content_hash=f"h-pq{n}")
    queue.lease_fill_for_reviewer(project=project, reviewer=alice)
    queue.lease_next_for_reviewer(project=project, reviewer=bob)
    found, leases = project_and_queue_for_user(user=alice, slug=project.slug)
    expected = leases_active_for_reviewer(project=project, reviewer=alice)
    assert [lease.pk for lease in leases] == [lease.pk for lease in expected] and len(leases) == 2
    assert [_fields(lease) for lease in leases] == [_fields(lease) for lease in expected]
    assert [_fields(lease.item) for lease in leases] == [_fields(lease.item) for lease in expected]
    project.members.remove(admin_user)  # an admin who is not a member sees the project, with no queue read
    assert project_and_queue_for_user(user=admin_user, slug=project.slug) == (project, None)
    with pytest.raises(Http404):
        project_and_queue_for_user(user=mallory, slug=project.slug)


def _raw_write_hazards(model) -> list[str]:
    """What a write through ``queue_sql``/``rawsql`` would skip for this model: a save() override or a receiver."""
    from django.db.models import Model
    from django.db.models.signals import post_init, post_save, pre_init, pre_save

    hazards = [f"{model.__name__}.save is overridden"] if model.save is not Model.save else []
    for name, signal in {
        "pre_save": pre_save,
        "post_save": post_save,
        "pre_init": pre_init,
        "post_init": post_init,
    }.items():
        sync, asynchronous = signal._live_receivers(model)
        if sync or asynchronous:
            hazards.append(f"{model.__name__} has a {name} receiver")
    return hazards


def test_models_the_queue_writes_with_written_out_sql_have_no_save_logic_it_would_skip():
    from django.db.models.signals import post_save

    from annotate.queue_sql import RAW_WRITTEN_MODELS

    assert {m.__name__ for m in RAW_WRITTEN_MODELS} >= {"Lease", "Annotation", "AnnotationRevision", "ItemResult"}
    assert {m.__name__: _raw_write_hazards(m) for m in RAW_WRITTEN_MODELS} == {
        m.__name__: [] for m in RAW_WRITTEN_MODELS
    }

    # The check itself fails when a model gains either.
    def receiver(**kwargs):
        pass

    post_save.connect(receiver, sender=Lease, weak=False)
    try:
        assert _raw_write_hazards(Lease) == ["Lease has a post_save receiver"]
    finally:
        post_save.disconnect(receiver, sender=Lease)

    class Overriding(Lease):
        class Meta:
            proxy = True
            app_label = "annotate"

        def save(self, *args, **kwargs):
            super().save(*args, **kwargs)

    assert _raw_write_hazards(Overriding) == ["Overriding.save is overridden"]
