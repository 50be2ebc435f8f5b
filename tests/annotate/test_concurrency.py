"""Many reviewers at once on PostgreSQL: the overlap cap and one-review-per-reviewer hold, nothing is lost."""

import random
import re
import threading
from collections import Counter

import pytest
from django.db import connections
from django.db.models import Count, Q
from django.test import Client
from django.urls import reverse

from annotate.models import Annotation, AnnotationRevision, Item, Lease

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

REVIEWERS = 32
ITEMS = 48
K = 2
HX = {"HTTP_HX_REQUEST": "true"}
LEASE_RE = re.compile(r'id="queue-current".*?data-lease="(\d+)"', re.S)


def test_32_reviewers_hammering_next_and_submit_never_break_the_overlap_cap(project, django_user_model):
    project.overlap_k = K
    project.save()
    users = django_user_model.objects.bulk_create(
        [django_user_model(username=f"r{i:02d}", password="x") for i in range(REVIEWERS)]
    )
    project.members.add(*users)
    Item.objects.bulk_create(
        Item(
            project=project,
            kind="gold",
            prompt=f"P{n}",
            responses=[{"text": "a"}, {"text": "b"}],
            content_hash=f"c{n}",
            split="train",
        )
        for n in range(ITEMS)
    )
    slug = project.slug
    barrier = threading.Barrier(REVIEWERS)
    accepted: dict[int, list[int]] = {}
    served: dict[int, list[int]] = {}
    errors: list[str] = []

    def reviewer(user):
        rng = random.Random(user.pk)
        client = Client()
        client.force_login(user)
        mine_accepted, mine_served = [], []
        try:
            barrier.wait()
            while True:
                response = client.get(reverse("annotate:queue-next", args=[slug]), **HX)
                match = LEASE_RE.search(response.content.decode())
                if match is None:
                    break
                lease_id = int(match.group(1))
                item_id = Lease.objects.values_list("item_id", flat=True).get(pk=lease_id)
                if rng.random() < 0.1:
                    client.post(reverse("annotate:queue-skip", args=[slug, lease_id]), **HX)
                    continue
                mine_served.append(item_id)
                response = client.post(
                    reverse("annotate:queue-submit", args=[slug, lease_id]),
                    {"action": "write", "answer": f"{user.username} on {item_id}"},
                    **HX,
                )
                if "goldset:submitted" in response.get("HX-Trigger", ""):
                    mine_accepted.append(item_id)
                else:
                    errors.append(f"{user.username}: submit refused: {response.content.decode()[:200]}")
        except Exception as exc:  # noqa: BLE001 - every failure must reach the assertion below
            errors.append(f"{user.username}: {exc!r}")
        finally:
            accepted[user.pk] = mine_accepted
            served[user.pk] = mine_served
            connections.close_all()

    threads = [threading.Thread(target=reviewer, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a reviewer thread hung"
    assert errors == []

    # No reviewer was served or stored the same item twice.
    for user_id, items in served.items():
        assert len(items) == len(set(items)), f"reviewer {user_id} got an item twice"
    # Nothing is lost: every accepted submission is an annotation with one revision, and back.
    total_accepted = sum(len(v) for v in accepted.values())
    assert total_accepted == Annotation.objects.count() == AnnotationRevision.objects.count()
    assert Counter((a.reviewer_id, a.item_id) for a in Annotation.objects.all()) == Counter(
        (u, i) for u, items in accepted.items() for i in items
    )
    # Every item got exactly k reviews (the queue drained), never more.
    per_item = Item.objects.annotate(
        submitted=Count("leases", filter=Q(leases__status="submitted"), distinct=True),
        live=Count("leases", filter=Q(leases__status__in=["active", "submitted"]), distinct=True),
        notes=Count("annotations", distinct=True),
    )
    for item in per_item:
        assert item.submitted == item.notes == K, f"item {item.pk}: {item.submitted} submissions"
        assert item.live == item.review_count <= K
    assert total_accepted == ITEMS * K


def _race(users, work):
    """Run work(user) in one thread per user, all released at once; returns (results, errors)."""
    barrier = threading.Barrier(len(users))
    results, errors = [], []

    def run(user):
        try:
            barrier.wait()
            results.append(work(user))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results, errors


def _reviewers(project, django_user_model, n=REVIEWERS):
    users = django_user_model.objects.bulk_create(
        [django_user_model(username=f"x{i:02d}", password="x") for i in range(n)]
    )
    project.members.add(*users)
    return users


def test_32_simultaneous_next_calls_on_one_item_hand_out_exactly_k_leases(project, django_user_model):
    from annotate.services.queue import lease_next_for_reviewer

    item = Item.objects.create(project=project, kind="gold", prompt="p", content_hash="one", split="train")
    users = _reviewers(project, django_user_model)
    results, errors = _race(users, lambda u: lease_next_for_reviewer(project=project, reviewer=u))
    assert errors == []
    assert sum(1 for lease in results if lease is not None) == project.overlap_k
    item.refresh_from_db()
    assert item.review_count == Lease.objects.filter(item=item, status="active").count() == project.overlap_k


def test_the_database_caps_raw_concurrent_lease_inserts_at_k(project, django_user_model):
    """Bypassing the queue service entirely: the trigger still lets exactly k leases through."""
    from django.db import IntegrityError, transaction
    from django.utils import timezone

    item = Item.objects.create(project=project, kind="gold", prompt="p", content_hash="raw", split="train")
    users = _reviewers(project, django_user_model)

    def insert(user):
        with transaction.atomic():
            Lease.objects.create(project=project, item=item, reviewer=user, expires_at=timezone.now())

    results, errors = _race(users, insert)
    assert len(results) == project.overlap_k
    assert len(errors) == REVIEWERS - project.overlap_k
    assert all(isinstance(e, IntegrityError) and "overlap k" in str(e) for e in errors)
    item.refresh_from_db()
    assert item.review_count == Lease.objects.filter(item=item).count() == project.overlap_k


def _items(project, n):
    return Item.objects.bulk_create(
        Item(project=project, kind="gold", prompt=f"Q{n}", content_hash=f"q{n}", split="train") for n in range(n)
    )


def test_two_refills_each_holding_a_picked_item_never_wait_on_each_other(project, django_user_model):
    """The deadlock this guards against: each refill, inside its submission's transaction, held the
    item it had just picked and waited for the other's to prefetch a second one."""
    from django.db import transaction

    from annotate.services.queue import lease_fill_for_reviewer

    project.overlap_k = 2
    project.save()
    _items(project, 2)
    one, two = _reviewers(project, django_user_model, n=2)
    both_picked, both_refilled = threading.Barrier(2, timeout=10), threading.Barrier(2, timeout=10)
    filled: dict[str, list] = {}
    errors: list[Exception] = []

    def refill(user):
        try:
            with transaction.atomic():
                filled[user.username] = [lease_fill_for_reviewer(project=project, reviewer=user, depth=1)]
                both_picked.wait()
                # Each holds one item locked; the second pick finds the other's item held by a live transaction.
                filled[user.username].append(lease_fill_for_reviewer(project=project, reviewer=user, depth=2))
                both_refilled.wait()  # neither commits before both have tried
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=refill, args=(user,)) for user in (one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a refill waited on the other's item"
    assert errors == []
    # Each got the item nobody held, then no prefetch while the other item was held: nothing to wait for.
    assert [len(batch) for batch in filled["x00"]] == [1, 1]
    assert [len(batch) for batch in filled["x01"]] == [1, 1]
    assert {filled["x00"][0][0].item_id, filled["x01"][0][0].item_id} == set(Item.objects.values_list("pk", flat=True))


def _pick_while_another_reviewer_holds(project, holder, waiter):
    """``waiter`` picks while ``holder``'s open transaction has just leased (and locked) an item; the
    holder commits 0.3 s later. Returns the waiter's lease and whether it answered only after that."""
    from django.db import transaction

    from annotate.services.queue import lease_next_for_reviewer

    held, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                lease_next_for_reviewer(project=project, reviewer=holder)
                held.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(10)
    threading.Timer(0.3, release.set).start()
    try:
        lease = lease_next_for_reviewer(project=project, reviewer=waiter)
        answered_after_release = release.is_set()
    finally:
        release.set()
        thread.join(10)
    return lease, answered_after_release


def test_a_pick_waits_for_a_held_item_that_still_has_room_instead_of_saying_nothing_is_left(project, django_user_model):
    project.overlap_k = 2
    project.save()
    (only,) = _items(project, 1)
    holder, waiter = _reviewers(project, django_user_model, n=2)
    lease, _ = _pick_while_another_reviewer_holds(project, holder, waiter)  # the holder takes 1 of 2 slots
    assert lease is not None and lease.item_id == only.pk
    only.refresh_from_db()
    assert only.review_count == 2


def test_a_pick_says_nothing_is_left_once_the_holder_takes_the_last_slot(project, django_user_model):
    project.overlap_k = 1
    project.save()
    _items(project, 1)
    holder, waiter = _reviewers(project, django_user_model, n=2)
    lease, answered_after_release = _pick_while_another_reviewer_holds(project, holder, waiter)
    assert answered_after_release, "answered before the holder committed: it must look again once the lock is gone"
    assert lease is None
    assert Lease.objects.filter(status="active").count() == 1


def test_simultaneous_submissions_of_one_item_both_count_in_its_result(project, django_user_model):
    """The second submission's refresh reads the first one's annotation: the item is decided, every time."""
    from annotate.models import ItemResult
    from annotate.payloads import GoldPayload
    from annotate.services.annotations import annotation_submit
    from annotate.services.queue import lease_next_for_reviewer

    for round_ in range(5):
        item = Item.objects.create(
            project=project, kind="gold", prompt="p", responses=[], content_hash=f"both-{round_}", split="train"
        )
        users = django_user_model.objects.bulk_create(
            [django_user_model(username=f"s{round_}-{i}", password="x") for i in range(project.overlap_k)]
        )
        project.members.add(*users)
        leases = {u.pk: lease_next_for_reviewer(project=project, reviewer=u) for u in users}
        assert all(lease.item_id == item.pk for lease in leases.values())

        def submit(user, leases=leases):
            return annotation_submit(
                project=project,
                lease_id=leases[user.pk].pk,
                reviewer=user,
                payload=GoldPayload(action="write", answer="Same answer."),
            )

        results, errors = _race(users, submit)
        assert errors == []
        result = ItemResult.objects.get(item=item)
        assert result.status == ItemResult.Status.CONSENSUS, (round_, result.status, result.reviewer_ids)
        assert sorted(result.reviewer_ids) == sorted(u.pk for u in users)
