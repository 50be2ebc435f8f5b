"""What goes into a snapshot: the filters an admin sets, the findings they exclude, and each example's lineage.

A snapshot is never edited: curating the data means making a new snapshot with filters (lineage: who
decided, how much reviewers agreed, provenance, kind, date) and exclusions (every example an audit
finding is about, examples picked by hand, or what a contamination check flagged). The filters are
stored on the snapshot, so the next person sees how it was made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date

from annotate.audit import AuditRecord, matcher

# Exclusion reasons, as counted on the snapshot.
EXCLUDED_BY_FINDING = "audit_finding"
EXCLUDED_BY_HAND = "picked"
EXCLUDED_CONTAMINATED = "contaminated"


@dataclass(frozen=True)
class SnapshotFilters:
    """Which approved train-split items a snapshot takes (empty tuples take every value)."""

    include_llm_judged: bool = False
    adjudicated_only: bool = False
    min_agreement: float | None = None
    provenances: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()  # annotate TaskKind values: gold, preference
    decided_from: date | None = None
    decided_until: date | None = None
    # Responses scored under this rubric version become SFT examples when every numeric or binary criterion
    # reaches ``rubric_min`` of its scale (1.0: the top level); without a version, rubric items stay out.
    rubric_version: int | None = None
    rubric_min: float = 1.0
    # Exclusions: every example of these audit findings ({"audit": id, "key": finding key}), items picked
    # by hand, and the items a contamination check flagged (its id).
    exclude_findings: tuple[tuple[int, str], ...] = ()
    exclude_items: tuple[int, ...] = ()
    exclude_contaminated_by: int | None = None
    excluded_counts: dict = field(default_factory=dict, compare=False)

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("excluded_counts")
        for key in ("decided_from", "decided_until"):
            data[key] = data[key].isoformat() if data[key] else None
        data["exclude_findings"] = [{"audit": a, "key": k} for a, k in self.exclude_findings]
        data["provenances"], data["kinds"] = list(self.provenances), list(self.kinds)
        data["exclude_items"] = list(self.exclude_items)
        return data

    @property
    def is_default(self) -> bool:
        return self == SnapshotFilters(include_llm_judged=self.include_llm_judged)


def rubric_passes(scores: dict, criteria: list[dict], *, minimum: float) -> bool:
    """Whether a rubric result reaches ``minimum`` (0 to 1) of the scale on every criterion that has a scale:
    ordinal and interval criteria by their levels' range, binary ones as 0 or 1. Nominal criteria have no
    better or worse and do not count; a criterion left unscored fails."""
    for criterion in criteria:
        scale = criterion.get("scale")
        if scale not in ("ordinal", "interval", "binary"):
            continue
        value = scores.get(criterion.get("key"))
        if scale == "binary":
            if not isinstance(value, bool) or float(value) < minimum:
                return False
            continue
        levels = [lv["value"] for lv in criterion.get("levels") or [] if isinstance(lv.get("value"), int | float)]
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        if len(levels) >= 2 and max(levels) > min(levels):
            low, high = min(levels), max(levels)
            if (value - low) / (high - low) < minimum - 1e-9:
                return False
    return True


def audit_record(record: dict, *, record_id: int = 0) -> AuditRecord:
    """A snapshot record (as the snapshot builds it, or as stored) in the audit's terms."""
    lineage = record.get("lineage") or {}
    turns = record.get("messages") or []
    prompt = "\n".join(f"{turn.get('role', '')}: {turn.get('content', '')}" for turn in turns)
    dpo = record["kind"] == "dpo"
    return AuditRecord(
        id=record_id,
        kind=record["kind"],
        prompt=prompt,
        target=record["chosen"] if dpo else record["completion"],
        rejected=record["rejected"] if dpo else "",
        provenance=lineage.get("provenance", ""),
        source=lineage.get("source", ""),
        rejected_source=lineage.get("rejected_source", ""),
        decided_by=lineage.get("decided_by", ""),
        agreement=lineage.get("agreement"),
        left_picks=lineage.get("left_picks", 0),
        picks=lineage.get("picks", 0),
    )


class Exclusions:
    """Tells, per candidate record, why it is left out of the new snapshot (None: it goes in)."""

    def __init__(self, *, findings: list[dict], items: set[int], contaminated: set[int]):
        self.matchers = [(f["key"], matcher(f)) for f in findings]
        self.items = items
        self.contaminated = contaminated
        self.counts: dict[str, int] = {}

    def reason(self, record: dict) -> str | None:
        item_id = record["source_item_id"]
        reason = None
        if item_id in self.items:
            reason = EXCLUDED_BY_HAND
        elif item_id in self.contaminated:
            reason = EXCLUDED_CONTAMINATED
        elif self.matchers:
            candidate = audit_record(record)
            for key, matches in self.matchers:
                if matches is not None and matches(candidate):
                    reason = f"{EXCLUDED_BY_FINDING}:{key}"
                    break
        if reason:
            self.counts[reason] = self.counts.get(reason, 0) + 1
        return reason
