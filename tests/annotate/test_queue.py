"""Assignment rules, leases, skip, expiry and the overlap cap."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotate.models import Item, Lease, Rubric, RubricVersion
from annotate.services import queue
from tests import factories

pytestmark = pytest.mark.django_db


def make_item(project, n, kind="gold", **fields):
    return factories.make_item(project, kind, n=n, **fields)


def take(project, user):
    return queue.lease_next_for_reviewer(project=project, reviewer=user)


def submit(lease):
    return factories.submit(lease, action="accept", source="1")


def test_a_reviewer_gets_items_in_a_stable_order(project, alice):
    items = [make_item(project, n) for n in range(3)]
    assert [take(project, alice).item for _ in range(3)] == items
    assert take(project, alice) is None


def test_an_item_is_never_leased_to_more_than_k_reviewers(project, alice, bob, carol):
    item = make_item(project, 1)
    assert take(project, alice).item == item
    assert take(project, bob).item == item
    assert take(project, carol) is None
    item.refresh_from_db()
    assert item.review_count == 2


def test_items_closest_to_completion_come_first(project, alice, bob, carol, judge):
    project.overlap_k = 3
    project.save()
    first, second = make_item(project, 1), make_item(project, 2)
    Lease.objects.create(project=project, item=second, reviewer=alice, expires_at=timezone.now() + timedelta(hours=1))
    Lease.objects.create(project=project, item=second, reviewer=bob, status="submitted", expires_at=timezone.now())
    assert take(project, carol).item == second  # two of three reviews beat none
    assert take(project, judge).item == first  # second is full now
    assert take(project, alice).item == first


def test_the_same_reviewer_never_gets_an_item_twice(project, alice):
    make_item(project, 1)
    lease = take(project, alice)
    submit(lease)
    assert take(project, alice) is None
    assert Lease.objects.filter(reviewer=alice).count() == 1


def test_calibration_items_are_not_served(project, alice):
    make_item(project, 1, is_calibration=True)
    assert take(project, alice) is None


def test_check_items_are_served_like_any_other(project, alice):
    item = make_item(project, 1, is_check=True, check_answer={"action": "accept"})
    assert take(project, alice).item == item


def test_a_skipped_item_comes_back_last_and_only_to_that_reviewer(project, alice, bob):
    first, second = make_item(project, 1), make_item(project, 2)
    lease = take(project, alice)
    queue.lease_skip(lease_id=lease.pk, reviewer=alice)
    assert take(project, alice).item == second
    assert [take(project, bob).item, take(project, bob).item] == [second, first]  # alice's skip is hers only
    again = take(project, alice)
    assert again.item == first and again.pk == lease.pk and again.status == Lease.Status.ACTIVE


def test_an_expired_lease_frees_the_item(project, alice, bob, carol):
    item = make_item(project, 1)
    lease = take(project, alice)
    take(project, bob)
    Lease.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert take(project, carol).item == item
    lease.refresh_from_db()
    assert lease.status == Lease.Status.EXPIRED


def test_lease_expiry_follows_the_project_setting(project, alice):
    project.lease_minutes = 7
    project.save()
    make_item(project, 1)
    lease = take(project, alice)
    assert timedelta(minutes=6) < lease.expires_at - timezone.now() <= timedelta(minutes=7)


def test_a_released_lease_lets_the_same_reviewer_review_again(project, alice):
    make_item(project, 1)
    lease = take(project, alice)
    submit(lease)
    queue.lease_release(lease=lease)
    again = take(project, alice)
    assert again.pk == lease.pk and again.status == Lease.Status.ACTIVE


def test_the_database_rejects_a_lease_beyond_k_whoever_writes_it(project, alice, bob, carol):
    item = make_item(project, 1)
    take(project, alice)
    take(project, bob)
    with pytest.raises(IntegrityError), transaction.atomic():
        Lease.objects.create(project=project, item=item, reviewer=carol, expires_at=timezone.now())


def test_the_database_rejects_a_second_lease_row_for_one_reviewer(project, alice):
    item = make_item(project, 1)
    take(project, alice)
    with pytest.raises(IntegrityError), transaction.atomic():
        Lease.objects.create(project=project, item=item, reviewer=alice, status="skipped", expires_at=timezone.now())


def test_a_stale_item_save_cannot_overwrite_the_review_count(project, alice):
    item = make_item(project, 1)
    take(project, alice)
    item.prompt = "Edited"
    item.save()  # carries review_count=0 from before the lease
    item.refresh_from_db()
    assert item.review_count == 1


def test_rubric_items_wait_for_an_active_rubric_version(project, alice):
    item = make_item(project, 1, kind="rubric")
    assert take(project, alice) is None
    rubric = Rubric.objects.create(project=project, name="Helpfulness")
    RubricVersion.objects.create(rubric=rubric, number=1, status="active", activated_at=timezone.now(), criteria=[])
    assert take(project, alice).item == item


def test_fill_holds_the_current_and_a_prefetched_item(project, alice):
    items = [make_item(project, n) for n in range(3)]
    leases = queue.lease_fill_for_reviewer(project=project, reviewer=alice)
    assert [lease.item for lease in leases] == items[:2]
    assert [lease.item for lease in queue.lease_fill_for_reviewer(project=project, reviewer=alice)] == items[:2]


def test_display_order_is_a_stored_permutation(project, alice):
    make_item(project, 1)
    lease = take(project, alice)
    assert sorted(lease.display_order) == [0, 1]
    lease.refresh_from_db()
    assert sorted(lease.display_order) == [0, 1]


def test_an_admin_can_reassign_an_active_lease(project, alice, bob):
    item = make_item(project, 1)
    lease = take(project, alice)
    moved = queue.lease_reassign(lease_id=lease.pk, project=project, to_reviewer=bob)
    assert moved.reviewer == bob and moved.item == item
    lease.refresh_from_db()
    assert lease.status == Lease.Status.EXPIRED
    item.refresh_from_db()
    assert item.review_count == 1


def test_reassigning_to_someone_whose_lease_on_the_item_expired_reuses_their_row(project, alice, bob):
    item = make_item(project, 1)
    old = take(project, bob)
    queue.lease_expire(lease_id=old.pk, project=project)
    lease = take(project, alice)
    assert lease.item == item
    moved = queue.lease_reassign(lease_id=lease.pk, project=project, to_reviewer=bob)
    assert moved.pk == old.pk and moved.status == Lease.Status.ACTIVE
    assert Lease.objects.filter(item=item, reviewer=bob).count() == 1
    item.refresh_from_db()
    assert item.review_count == 1


def test_a_lease_the_reviewer_already_holds_is_skipped_without_breaking_the_transaction(project, alice):
    # Their other tab leased the item between this pick's read and its insert: nothing is inserted,
    # no error aborts the caller's transaction (a submission), and the pick moves on.
    item = make_item(project, 1)
    take(project, alice)
    with transaction.atomic():
        assert queue._take(item=item, reviewer=alice, now=timezone.now()) is None
        assert Lease.objects.filter(item=item, reviewer=alice).count() == 1  # the transaction still works


def test_reassigning_to_a_non_member_is_refused(project, alice, mallory):
    make_item(project, 1)
    lease = take(project, alice)
    with pytest.raises(ValidationError, match="not a member"):
        queue.lease_reassign(lease_id=lease.pk, project=project, to_reviewer=mallory)


def test_an_admin_can_expire_a_lease(project, alice, bob, carol):
    make_item(project, 1)
    lease = take(project, alice)
    take(project, bob)
    queue.lease_expire(lease_id=lease.pk, project=project)
    assert take(project, carol) is not None


def test_expiring_stale_leases_touches_only_leases_past_their_time(project, alice, bob):
    make_item(project, 1)
    stale, fresh = take(project, alice), take(project, bob)
    Lease.objects.filter(pk=stale.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert queue.lease_expire_stale(project=project) == 1
    assert Lease.objects.get(pk=stale.pk).status == "expired"
    assert Lease.objects.get(pk=fresh.pk).status == "active"
    assert Item.objects.get().review_count == 1


def test_partly_reviewed_items_are_looked_for_in_a_bounded_window(project, alice, carol, monkeypatch):
    items = [make_item(project, n) for n in range(5)]
    for _ in range(3):
        submit(take(project, alice))  # items 0-2 now wait for a second review, alice's own
    soon = timezone.now() + timedelta(hours=1)
    Lease.objects.create(project=project, item=items[4], reviewer=carol, expires_at=soon)
    # Within the window, carol's half-done item 4 beats the fresh item 3 ...
    assert take(project, alice).item == items[4]
    Lease.objects.filter(reviewer=alice, item=items[4]).delete()
    # ... past it (alice's own half-done items fill the window), fresh items come next.
    monkeypatch.setattr(queue, "PARTIAL_WINDOW", 3)
    assert take(project, alice).item == items[3]
