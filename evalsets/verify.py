"""Recompute the content hashes of frozen eval set versions and training snapshots from their stored rows.

The write-once triggers stop every role the app uses; a superuser can still drop a trigger and edit
a row. The hashes are the last line: each record's content hash must match its fields, the version's
(or snapshot's) sha256 must match its records in order, and that sha256 must still be the one that
earlier verifications, contamination checks and training manifests recorded for it.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from evalsets.export import CANONICAL_FIELDS, canonical_line, record_content_hash
from evalsets.models import EvalRecord, EvalSetVersion, HashVerification

SNAPSHOT_FIELDS = ("kind", "messages", "completion", "chosen", "rejected", "source_item_id")
MAX_PROBLEMS = 50
CHUNK = 5000


@dataclass
class Outcome:
    """What recomputing one version's or snapshot's hash found."""

    subject: str
    stored_sha256: str
    computed_sha256: str = ""
    record_count: int = 0
    problems: list[str] = field(default_factory=list)
    version_id: int | None = None
    snapshot_id: int | None = None
    more_problems: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)
        else:
            self.more_problems += 1


def _short(sha: str) -> str:
    return f"{sha[:12]}…"


def _recorded_elsewhere(outcome: Outcome, stored: str, recorded: dict[str, list[str]]) -> None:
    for sha, where in sorted(recorded.items()):
        if sha != stored:
            outcome.problem(
                f"its stored sha256 {_short(stored)} is not the {_short(sha)} that {', '.join(where[:3])} recorded "
                "for it: the stored hash was changed"
            )


def _version_hashes_recorded() -> dict[int, dict[str, list[str]]]:
    """{version id: {sha256: [where]}}: what contamination checks and earlier verifications saw."""
    from training.models import SnapshotCheck

    seen: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for check_id, versions in SnapshotCheck.objects.order_by("pk").values_list("pk", "evalset_versions").iterator():
        for v in versions or []:
            if isinstance(v, dict) and isinstance(v.get("id"), int) and v.get("sha256"):
                seen[v["id"]][v["sha256"]].append(f"contamination check {check_id}")
    rows = HashVerification.objects.filter(version__isnull=False).order_by("pk")
    for version_id, sha, at in rows.values_list("version_id", "stored_sha256", "verified_at").iterator():
        seen[version_id][sha].append(f"the verification of {at:%Y-%m-%d %H:%M}")
    return seen


def _version_rows(version: EvalSetVersion) -> Iterator[tuple]:
    return (
        EvalRecord.objects.filter(version_id=version.pk)
        .order_by("position")
        .values_list("pk", "content_hash", *CANONICAL_FIELDS)
        .iterator(chunk_size=CHUNK)
    )


def verify_version(version: EvalSetVersion, recorded: dict[str, list[str]] | None = None) -> Outcome:
    """Recompute one eval set version's record hashes and sha256, naming each record that does not match."""
    outcome = Outcome(subject=version.name, stored_sha256=version.sha256, version_id=version.pk)
    digest = hashlib.sha256()
    for pk, content_hash, *values in _version_rows(version):
        record = dict(zip(CANONICAL_FIELDS, values, strict=True))
        digest.update(canonical_line(record).encode())
        digest.update(b"\n")
        outcome.record_count += 1
        recomputed = record_content_hash(record)
        if recomputed != content_hash:
            outcome.problem(
                f"record {record['position']} (id {pk}, item {record['item_id']}): its fields no longer match its "
                f"content hash (stored {_short(content_hash)}, recomputed {_short(recomputed)})"
            )
    outcome.computed_sha256 = digest.hexdigest()
    if outcome.record_count != version.record_count:
        outcome.problem(f"holds {outcome.record_count} records, but the version says {version.record_count}")
    if outcome.computed_sha256 != version.sha256:
        outcome.problem(
            f"its records hash to {_short(outcome.computed_sha256)}, not the version's {_short(version.sha256)}"
        )
    _recorded_elsewhere(outcome, version.sha256, recorded or {})
    return outcome


def _snapshot_hashes_recorded() -> dict[int, dict[str, list[str]]]:
    """{snapshot id: {sha256: [where]}}: what training manifests and earlier verifications saw."""
    from training.models import TrainingJob

    seen: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    jobs = TrainingJob.objects.exclude(manifest={}).order_by("pk").values_list("pk", "snapshot_id", "manifest")
    for job_id, snapshot_id, manifest in jobs.iterator():
        sha = (manifest or {}).get("snapshot", {}).get("sha256") if isinstance(manifest, dict) else None
        if isinstance(sha, str) and sha:
            seen[snapshot_id][sha].append(f"the manifest of job {job_id}")
    rows = HashVerification.objects.filter(snapshot__isnull=False).order_by("pk")
    for snapshot_id, sha, at in rows.values_list("snapshot_id", "stored_sha256", "verified_at").iterator():
        seen[snapshot_id][sha].append(f"the verification of {at:%Y-%m-%d %H:%M}")
    return seen


def verify_snapshot(snapshot, recorded: dict[str, list[str]] | None = None) -> Outcome:
    """Recompute one training snapshot's record hashes and sha256, naming each record that does not match."""
    from training.models import SnapshotRecord
    from training.services import canonical_line as snapshot_line

    outcome = Outcome(
        subject=f"snapshot {snapshot.name!r} (#{snapshot.pk})", stored_sha256=snapshot.sha256, snapshot_id=snapshot.pk
    )
    digest = hashlib.sha256()
    counts = {"sft": 0, "dpo": 0}
    rows = (
        SnapshotRecord.objects.filter(snapshot_id=snapshot.pk)
        .order_by("position")
        .values_list("pk", "position", "content_hash", *SNAPSHOT_FIELDS)
        .iterator(chunk_size=CHUNK)
    )
    for pk, position, content_hash, *values in rows:
        record = dict(zip(SNAPSHOT_FIELDS, values, strict=True))
        line = snapshot_line(record)
        digest.update(line.encode())
        digest.update(b"\n")
        outcome.record_count += 1
        counts[record["kind"]] = counts.get(record["kind"], 0) + 1
        recomputed = hashlib.sha256(line.encode()).hexdigest()
        if recomputed != content_hash:
            outcome.problem(
                f"record {position} (id {pk}, item {record['source_item_id']}): its fields no longer match its "
                f"content hash (stored {_short(content_hash)}, recomputed {_short(recomputed)})"
            )
    outcome.computed_sha256 = digest.hexdigest()
    if (counts["sft"], counts["dpo"]) != (snapshot.sft_count, snapshot.dpo_count):
        outcome.problem(
            f"holds {counts['sft']} SFT and {counts['dpo']} DPO records, but the snapshot says "
            f"{snapshot.sft_count} and {snapshot.dpo_count}"
        )
    if outcome.computed_sha256 != snapshot.sha256:
        outcome.problem(
            f"its records hash to {_short(outcome.computed_sha256)}, not the snapshot's {_short(snapshot.sha256)}"
        )
    _recorded_elsewhere(outcome, snapshot.sha256, recorded or {})
    return outcome


def verify_all() -> list[Outcome]:
    """Every eval set version, then every training snapshot, oldest first."""
    from training.models import TrainingSnapshot

    versions_seen = _version_hashes_recorded()
    snapshots_seen = _snapshot_hashes_recorded()
    outcomes = [
        verify_version(v, versions_seen.get(v.pk))
        for v in EvalSetVersion.objects.select_related("project").order_by("pk")
    ]
    outcomes += [verify_snapshot(s, snapshots_seen.get(s.pk)) for s in TrainingSnapshot.objects.order_by("pk")]
    return outcomes
