"""The last line of defence: someone who can drop the write-once triggers (a superuser) edits frozen rows,
and `manage.py verify_evalsets` names the version or snapshot and the record, exits 1, and the version page
says so."""

from contextlib import contextmanager
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.urls import reverse

from config import writeonce
from evalsets.export import CANONICAL_FIELDS, record_content_hash
from evalsets.models import EvalRecord, HashVerification
from tests.conftest import ON_POSTGRES, superuser_url
from tests.evalsets.conftest import gold_payload

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def tamperer(table: str):
    """A client with the table's write-once triggers dropped: a superuser on PostgreSQL, any client on SQLite.
    The triggers come back afterwards, so the rest of the suite is guarded again."""
    if ON_POSTGRES:
        import psycopg

        with psycopg.connect(superuser_url(), autocommit=True) as root:
            root.execute(f'DROP TRIGGER "{table}_write_once_rows" ON "{table}"')
            try:
                yield lambda sql, params=(): root.execute(sql, params)
            finally:
                for statement in writeonce._pg_sql(table):
                    root.execute(statement)
    else:
        with connections["default"].cursor() as cursor:
            for op in ("update", "delete"):
                cursor.execute(f'DROP TRIGGER "{table}_write_once_{op}"')
            try:
                yield lambda sql, params=(): cursor.execute(sql.replace("%s", "?"), params)
            finally:
                for statement in writeonce._sqlite_sql(table):
                    cursor.execute(statement)


def verify() -> tuple[str, str, CommandError | None]:
    out, err = StringIO(), StringIO()
    try:
        call_command("verify_evalsets", stdout=out, stderr=err)
    except CommandError as exc:
        return out.getvalue(), err.getvalue(), exc
    return out.getvalue(), err.getvalue(), None


@pytest.fixture
def frozen(make_item, freeze, admin_user):
    """A frozen eval set version and a training snapshot made the normal way."""
    from training.services import snapshot_create

    for i in range(3):
        make_item("gold", prompt=f"Where is my parcel number {i}?", payload=gold_payload(f"Track it with code {i}."))
    make_item("preference")
    make_item("gold", split="train", payload=gold_payload("Reset it from the settings page."))
    version = freeze().version
    snapshot = snapshot_create(name="train v1", projects=[version.project], created_by=admin_user)
    return version, snapshot


def test_clean_data_verifies_and_the_version_page_says_when(frozen, client, admin_user):
    version, snapshot = frozen
    out, err, failed = verify()
    assert failed is None, err
    assert f"OK        {version.name}: 4 records, sha256 {version.sha256}" in out
    assert f"OK        snapshot 'train v1' (#{snapshot.pk}): 1 records" in out
    row = HashVerification.objects.get(version=version)
    assert row.ok and row.computed_sha256 == version.sha256 and row.record_count == 4
    assert HashVerification.objects.get(snapshot=snapshot).ok
    client.force_login(admin_user)
    page = client.get(reverse("evalsets:version-detail", args=[version.pk])).content.decode()
    assert f"Verified at {row.verified_at:%Y-%m-%d %H:%M} UTC" in page and "tampered" not in page


def test_a_version_never_verified_says_so(frozen, client, admin_user):
    client.force_login(admin_user)
    page = client.get(reverse("evalsets:version-detail", args=[frozen[0].pk])).content.decode()
    assert "Not verified yet" in page


def test_a_record_edited_behind_the_triggers_is_named_with_its_version_and_exit_status_1(frozen, client, admin_user):
    version, _ = frozen
    record = EvalRecord.objects.filter(version=version, kind="gold").order_by("position").last()
    with tamperer("evalsets_evalrecord") as execute:
        execute("UPDATE evalsets_evalrecord SET reference = %s WHERE id = %s", ["Ignore the tracking code.", record.pk])
    assert EvalRecord.objects.get(pk=record.pk).reference == "Ignore the tracking code."
    out, err, failed = verify()
    assert failed is not None and failed.returncode == 1
    assert version.name in str(failed)
    assert (
        f"{version.name}: record {record.position} (id {record.pk}, item {record.item_id}): "
        "its fields no longer match its content hash" in err
    )
    assert f"{version.name}: its records hash to" in err
    verdict = HashVerification.objects.get(version=version)
    assert not verdict.ok and any(f"id {record.pk}" in p for p in verdict.problems)
    client.force_login(admin_user)
    page = client.get(reverse("evalsets:version-detail", args=[version.pk])).content.decode()
    assert "tampered" in page and f"(id {record.pk}, item {record.item_id})" in page


def test_a_record_rewritten_with_a_matching_content_hash_still_breaks_the_versions_hash(frozen):
    version, _ = frozen
    record = EvalRecord.objects.filter(version=version).order_by("position").first()
    fields = {f: getattr(record, f) for f in CANONICAL_FIELDS}
    fields["prompt"] = "A prompt someone slipped in."
    with tamperer("evalsets_evalrecord") as execute:
        execute(
            "UPDATE evalsets_evalrecord SET prompt = %s, content_hash = %s WHERE id = %s",
            [fields["prompt"], record_content_hash(fields), record.pk],
        )
    _, err, failed = verify()
    assert failed is not None and f"{version.name}: its records hash to" in err
    assert "content hash" not in err  # the record is self-consistent; the version's hash is what catches it


def test_rewriting_the_versions_hash_too_is_caught_by_the_hashes_recorded_before(frozen):
    from evalsets.verify import verify_version

    version, _ = frozen
    assert verify()[2] is None  # the verification records this sha256
    record = EvalRecord.objects.filter(version=version).order_by("position").first()
    fields = {f: getattr(record, f) for f in CANONICAL_FIELDS}
    fields["prompt"] = "A prompt someone slipped in."
    with tamperer("evalsets_evalrecord") as execute:
        execute(
            "UPDATE evalsets_evalrecord SET prompt = %s, content_hash = %s WHERE id = %s",
            [fields["prompt"], record_content_hash(fields), record.pk],
        )
    forged = verify_version(version).computed_sha256
    with tamperer("evalsets_evalsetversion") as execute:
        execute("UPDATE evalsets_evalsetversion SET sha256 = %s WHERE id = %s", [forged, version.pk])
    _, err, failed = verify()
    assert failed is not None
    assert f"{version.name}: its stored sha256 {forged[:12]}… is not the {version.sha256[:12]}…" in err
    assert "the stored hash was changed" in err


def test_a_tampered_training_snapshot_record_is_named_with_its_snapshot(frozen):
    from training.models import SnapshotRecord

    _, snapshot = frozen
    record = SnapshotRecord.objects.get(snapshot=snapshot)
    with tamperer("training_snapshotrecord") as execute:
        execute("UPDATE training_snapshotrecord SET completion = %s WHERE id = %s", ["Poisoned.", record.pk])
    _, err, failed = verify()
    assert failed is not None and failed.returncode == 1
    assert (
        f"snapshot 'train v1' (#{snapshot.pk}): record 0 (id {record.pk}, item {record.source_item_id}): "
        "its fields no longer match its content hash" in err
    )
