"""What keeps the queue cheap per annotation: query budgets per request, lazy role lookups, writer turns."""

import re
import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotate.models import Annotation, Item, Lease
from annotate.services.queue import write_turn

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
# Session, user, the project (with membership) and the reviewer's leases in one read, and the active
# rubric version (this project scores rubrics). It was 7, then 5.
NEXT_QUERY_BUDGET = 4
# Session, user and project, then in one transaction: the lease lock (with the reviewer's other active
# leases), the lease update, annotation, revision and result-row lock (one statement on PostgreSQL,
# four on SQLite), the item's annotations, the result update, and the refill's rubric check, pick and
# lease insert (no savepoint). Inside a test's transaction, savepoints stand in for BEGIN/COMMIT.
# It was 34, then 31, then 22.
SUBMIT_QUERY_BUDGET = 17 if connection.vendor == "sqlite" else 14


def make_items(project, count):
    Item.objects.bulk_create(
        Item(
            project=project,
            kind="gold",
            prompt=f"Prompt {n}",
            responses=[{"text": f"A{n}", "model": "m1"}, {"text": f"B{n}", "model": "m2"}],
            content_hash=f"perf-{n}",
            split="train",
        )
        for n in range(count)
    )


def next_cards(client, project):
    html = client.get(reverse("annotate:queue-next", args=[project.slug]), **HX).content.decode()
    current = re.search(r'id="queue-current".*?data-lease="(\d+)"', html, re.S).group(1)
    prefetch = re.search(r'id="queue-prefetch".*?data-lease="(\d+)"', html, re.S).group(1)
    return current, prefetch


def submit(client, project, lease_id, have):
    url = reverse("annotate:queue-submit", args=[project.slug, lease_id])
    body = {"action": "write", "answer": f"answer {lease_id}", "duration_ms": "900", "have": have}
    return client.post(url, body, **HX)


def test_next_and_submit_stay_within_their_query_budgets(client, alice, project):
    make_items(project, 6)
    client.force_login(alice)
    current, prefetch = next_cards(client, project)
    submit(client, project, current, prefetch)  # first submission creates the rows later ones reuse
    with CaptureQueriesContext(connection) as on_next:
        current, prefetch = next_cards(client, project)
    with CaptureQueriesContext(connection) as on_submit:
        response = submit(client, project, current, prefetch)
    assert response.status_code == 200 and "goldset:submitted" in response.headers["HX-Trigger"]
    assert Annotation.objects.filter(reviewer=alice).count() == 2
    assert len(on_next.captured_queries) <= NEXT_QUERY_BUDGET, [q["sql"] for q in on_next.captured_queries]
    assert len(on_submit.captured_queries) <= SUBMIT_QUERY_BUDGET, [q["sql"] for q in on_submit.captured_queries]


def test_a_queue_fragment_does_not_look_up_the_reviewers_groups(client, alice, project):
    make_items(project, 3)
    client.force_login(alice)
    next_cards(client, project)
    with CaptureQueriesContext(connection) as queries:
        next_cards(client, project)
    assert not [q for q in queries.captured_queries if "auth_group" in q["sql"]]


def test_the_full_page_still_shows_admin_links_to_admins_only(client, alice, admin_user, project):
    make_items(project, 3)
    client.force_login(admin_user)
    admin_page = client.get(reverse("annotate:queue", args=[project.slug])).content.decode()
    client.force_login(alice)
    reviewer_page = client.get(reverse("annotate:queue", args=[project.slug])).content.decode()
    assert reverse("admin:index") in admin_page
    assert reverse("admin:index") not in reviewer_page


def test_an_admin_who_is_not_a_member_opens_the_queue_and_an_outsider_gets_404(client, admin_user, mallory, project):
    make_items(project, 2)
    project.members.remove(admin_user)
    client.force_login(admin_user)
    assert client.get(reverse("annotate:queue", args=[project.slug])).status_code == 200
    client.force_login(mallory)
    assert client.get(reverse("annotate:queue", args=[project.slug])).status_code == 404
    assert client.get(reverse("annotate:queue", args=["no-such-project"])).status_code == 404


def test_write_turns_nest_within_one_thread_and_order_threads_on_sqlite():
    entered = threading.Event()
    with write_turn(), write_turn():  # a refill inside a submission takes its turn again
        other = threading.Thread(target=lambda: (write_turn().__enter__(), entered.set()), daemon=True)
        other.start()
        waited = not entered.wait(0.2)
    other.join(5)
    assert entered.is_set()
    # SQLite: the other thread waited for this one's turn to end. PostgreSQL: no turns, it never waited.
    assert waited is (connection.vendor == "sqlite")


def test_on_sqlite_a_write_turn_waits_for_another_process_holding_the_turn_file():
    """Another process's turn is an flock on a file beside the database (a second open file
    description stands in for it here); the waiter wakes as soon as it is released."""
    import fcntl

    entered = threading.Event()
    name = str(connection.settings_dict["NAME"])

    def take_turn():
        with write_turn():
            entered.set()

    if connection.vendor != "sqlite":  # PostgreSQL: no turns, nothing to wait for
        take_turn()
        assert entered.is_set()
        return
    with open(name + ".queue-turn", "a+b") as other_process:
        fcntl.flock(other_process, fcntl.LOCK_EX)
        waiter = threading.Thread(target=take_turn, daemon=True)
        waiter.start()
        assert not entered.wait(0.3), "took the turn while another process held it"
        fcntl.flock(other_process, fcntl.LOCK_UN)
    waiter.join(5)
    assert entered.is_set()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_written_out_pick_skips_items_locked_by_another_reviewer(project, alice, bob):
    from django.db import transaction

    from annotate.services.queue import _pick

    make_items(project, 2)
    first = Item.objects.filter(project=project).order_by("id").first()
    locked = threading.Event()
    release = threading.Event()

    def hold_first_item():
        with transaction.atomic():
            Item.objects.select_for_update().get(pk=first.pk)
            locked.set()
            release.wait(5)
        connection.close()

    holder = threading.Thread(target=hold_first_item)
    holder.start()
    try:
        assert locked.wait(5)
        with transaction.atomic():
            item = _pick(project=project, reviewer=bob, blocked=[])
    finally:
        release.set()
        holder.join(5)
    assert item is not None and item.pk != first.pk
    assert getattr(item, "own_lease", "missing") is None
    assert not Lease.objects.filter(reviewer=bob).exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_submission_in_flight_does_not_hide_its_item_from_the_next_reviewer(project, alice, bob):
    """An uncommitted annotation holds a KEY SHARE lock on its item until it commits; the pick takes
    FOR NO KEY UPDATE, which does not conflict with it (FOR UPDATE did, and deadlocked under load)."""
    from django.db import transaction

    from annotate.models import Annotation
    from annotate.services.queue import lease_next_for_reviewer

    make_items(project, 1)
    item = Item.objects.get(project=project)
    inserted = threading.Event()
    release = threading.Event()

    def submission_in_flight():
        with transaction.atomic():
            Annotation.objects.create(item=item, reviewer=alice, kind=item.kind, payload={"action": "write"})
            inserted.set()
            release.wait(5)
            transaction.set_rollback(True)
        connection.close()

    holder = threading.Thread(target=submission_in_flight)
    holder.start()
    try:
        assert inserted.wait(5)
        lease = lease_next_for_reviewer(project=project, reviewer=bob)
    finally:
        release.set()
        holder.join(5)
    assert lease is not None and lease.item_id == item.pk
