"""Reads for the annotate app, with permission built in."""

import csv
import hashlib
import hmac
import statistics
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Max, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from annotate import queue_sql, report_reader, roles
from annotate.consensus import latest_version_annotations
from annotate.importers import rejected_errors_path
from annotate.models import (
    Adjudication,
    AgreementReport,
    Annotation,
    ApiToken,
    Flag,
    ImportBatch,
    Item,
    ItemResult,
    Lease,
    Project,
    Rubric,
    RubricSignoff,
    RubricVersion,
    TaskKind,
)
from annotate.payloads import GoldAction, PreferenceChoice, Strength
from annotate.reports import report_rubric_version
from annotate.services.tokens import token_digest, token_prefix
from config import csvwriter, rawsql


def project_list_for_user(*, user) -> QuerySet[Project]:
    """Projects a user may see: all for admins, their own for everyone else."""
    if roles.is_admin(user):
        return Project.objects.all()
    return Project.objects.filter(members=user)


def project_get_for_user(*, user, slug: str) -> Project:
    """The project, or 404 when it does not exist or the user is not a member (no existence leak)."""
    # Members first, in one written-out query (every queue request comes here; see rawsql); the user's
    # groups are looked up only for someone who is not a member, who sees the project only as an admin.
    project = _project_of_member(user_id=user.pk, slug=slug)
    if project is None and roles.is_admin(user):
        project = Project.objects.filter(slug=slug).first()
    if project is None:
        raise Http404("No such project.")
    return project


def project_and_queue_for_user(*, user, slug: str, now=None) -> tuple[Project, list[Lease] | None]:
    """The project (as ``project_get_for_user``) and, for a member, their unexpired active leases in it
    with their items, oldest first, in one written-out query: every "next" request needs both.

    The leases are None when they were not read (an admin who is not a member)."""
    rows = rawsql.fetch(*queue_sql.project_and_queue(user_id=user.pk, slug=slug, now=now or timezone.now()))
    if not rows:
        return project_get_for_user(user=user, slug=slug), None
    project = rawsql.load(Project, rows[0])
    at_lease = rawsql.width(Project)
    leases = [
        _lease_with_item(row, at_lease, project)
        for row in rows
        if row[at_lease] is not None  # a member with no active lease: the outer join's empty side
    ]
    return project, leases


def project_and_lease_for_user(*, user, slug: str, lease_id: int) -> tuple[Project, Lease]:
    """The project and one of the user's own leases in it, with its item, in one query; 404 for anyone else's
    lease (no existence leak) or a project the user may not see."""
    rows = rawsql.fetch(*queue_sql.project_and_lease(user_id=user.pk, slug=slug, lease_id=lease_id))
    if not rows or not (rows[0][-1] or roles.is_admin(user)):
        raise Http404("No such item in your queue.")
    project = rawsql.load(Project, rows[0])
    return project, _lease_with_item(rows[0], rawsql.width(Project), project)


def _lease_with_item(row, start: int, project: Project | None = None) -> Lease:
    lease = rawsql.load(Lease, row, start)
    lease.item = rawsql.load(Item, row, start + rawsql.width(Lease))
    if project is not None:
        lease.project = lease.item.project = project
    return lease


def leases_load(sql: str, params) -> list[Lease]:
    """Leases with their items from a ``queue_sql.leases_with_items`` statement."""
    return [_lease_with_item(row, 0) for row in rawsql.fetch(sql, params)]


def leases_active_for_reviewer(*, project: Project, reviewer, now=None) -> list[Lease]:
    """The reviewer's unexpired active leases in the order they were taken (the first is on screen)."""
    sql, params = queue_sql.leases_active(project_id=project.pk, reviewer_id=reviewer.pk, now=now or timezone.now())
    leases = leases_load(sql, params)
    for lease in leases:
        lease.project = lease.item.project = project
    return leases


def _project_of_member(*, user_id, slug: str) -> Project | None:
    rows = rawsql.fetch(*queue_sql.project_of_member(user_id=user_id, slug=slug))
    return rawsql.load(Project, rows[0]) if rows else None


def project_get_for_admin(*, user, slug: str) -> Project:
    """The project for an admin-only page; reviewers get 403 on projects they belong to."""
    project = project_get_for_user(user=user, slug=slug)
    if not roles.is_admin(user):
        raise PermissionDenied("Only admins can do this.")
    return project


def item_counts(*, project: Project) -> dict[str, int]:
    """Item counts by split, for the project page."""
    qs = Item.objects.filter(project=project)
    return {
        "total": qs.count(),
        "train": qs.filter(split="train").count(),
        "eval": qs.filter(split="eval").count(),
    }


# --- Queue -------------------------------------------------------------------------------------


def rubric_version_active(*, project: Project) -> RubricVersion | None:
    """The project's active rubric version (the latest activated), or None when none is active."""
    return (
        RubricVersion.objects.filter(rubric__project=project, status=RubricVersion.Status.ACTIVE)
        .order_by("-activated_at", "-id")
        .first()
    )


def project_get_for_adjudicator(*, user, slug: str) -> Project:
    """The project for adjudication pages: members who adjudicate (and admins); others get 403."""
    project = project_get_for_user(user=user, slug=slug)
    if not roles.is_adjudicator(user):
        raise PermissionDenied("Only adjudicators can open the adjudication queue.")
    return project


def project_get_for_report(*, user, slug: str) -> Project:
    """The project for its agreement report: admins and adjudicators (it names reviewers and their accuracy)."""
    project = project_get_for_user(user=user, slug=slug)
    if not (roles.is_admin(user) or roles.is_adjudicator(user)):
        raise PermissionDenied("The agreement report is for admins and adjudicators.")
    return project


def item_get_for_adjudication(*, user, slug: str, item_id: int) -> Item:
    """A non-calibration item of a project the adjudicator works on, or 404."""
    project = project_get_for_adjudicator(user=user, slug=slug)
    try:
        return Item.objects.select_related("project").get(pk=item_id, project=project, is_calibration=False)
    except Item.DoesNotExist:
        raise Http404("No such item in this project.") from None


def disputed_items(*, project: Project, q: str = ""):
    """Disputed results waiting for an adjudicator, oldest first; searched by prompt text, item number ("#12")
    or the username of a reviewer who reviewed the item."""
    results = ItemResult.objects.filter(item__project=project, status=ItemResult.Status.DISPUTED)
    if q:
        match = Q(item__prompt__icontains=q) | Q(
            item__in=Annotation.objects.filter(item__project=project, reviewer__username__icontains=q).values("item")
        )
        if q.lstrip("#").isdigit():
            match |= Q(item_id=int(q.lstrip("#")))
        results = results.filter(match)
    return results.select_related("item").order_by("decided_at", "item_id")


def describe_payload(
    *, item: Item, payload: dict | None, criteria: list[dict] | None = None, display_order: list[int] | None = None
) -> list[tuple[str, str]]:
    """A judgement as (label, text) lines a person can read; response indices become their text.

    With the ``display_order`` the reviewer saw, responses are named as their task screen named them
    ("Candidate 2", "Response 1"); without it (adjudicators, admins) by their stored position ("#2")."""
    if not payload:
        return []
    responses = item.responses or []
    noun = "Candidate" if item.kind == TaskKind.GOLD else "Response"

    def response(i) -> str:
        if not (isinstance(i, int) and 0 <= i < len(responses)):
            return "–"
        text = str(responses[i].get("text", ""))[:300]
        if display_order and i in display_order:
            return f"{noun} {display_order.index(i) + 1}: {text}"
        return f"#{i + 1}: {text}"

    if item.kind == TaskKind.GOLD:
        action = payload.get("action")
        lines = [("Action", GoldAction(action).label if action in GoldAction.values else str(action))]
        if action in (GoldAction.ACCEPT, GoldAction.EDIT) and payload.get("source_index") is not None:
            lines.append(
                ("Accepted" if action == GoldAction.ACCEPT else "Edited", response(payload.get("source_index")))
            )
        if payload.get("answer") and action != GoldAction.ACCEPT:
            lines.append(("Answer", str(payload["answer"])))
    elif item.kind == TaskKind.PREFERENCE:
        choice = payload.get("choice")
        lines = [("Choice", PreferenceChoice(choice).label if choice in PreferenceChoice.values else str(choice))]
        if choice == PreferenceChoice.RESPONSE:
            lines += [("Better", response(payload.get("chosen"))), ("Worse", response(payload.get("rejected")))]
            strength = payload.get("strength")
            if strength:
                lines.append(("Strength", Strength(strength).label if strength in Strength.values else str(strength)))
    else:
        names = {c["key"]: c["name"] for c in criteria or []}
        lines = [("Scored", response(payload.get("response_index")))]
        lines += [(names.get(k, k), str(v)) for k, v in (payload.get("scores") or {}).items()]
    for note in ("reason", "rationale"):
        if payload.get(note):
            lines.append((note.capitalize(), str(payload[note])))
    return lines


_LOOK_UP = object()


def queue_blocked_reason(*, project: Project, active_version=_LOOK_UP) -> str:
    """Why some of the project's items are not being served, in words for the queue page ("" when none).

    ``active_version``: the project's active rubric version when the caller has just fetched it."""
    if TaskKind.RUBRIC not in (project.task_kinds or []):
        return ""
    if active_version is _LOOK_UP:
        active_version = rubric_version_active(project=project)
    if active_version is None:
        return (
            "Rubric-scoring items are not being served: the project has no active rubric version yet. "
            "An admin has to activate one before they can be scored."
        )
    return ""


def lease_get_for_reviewer(*, user, project: Project, lease_id: int) -> Lease:
    """One of the user's own leases in the project; 404 for anyone else's (no existence leak)."""
    try:
        # No item: the views only need the lease's id and status; services lock and load what they use.
        return Lease.objects.get(pk=lease_id, project=project, reviewer=user)
    except Lease.DoesNotExist:
        raise Http404("No such item in your queue.") from None


def annotation_get_for_reviewer(*, user, project: Project, item_id: int) -> Annotation:
    """The user's own annotation of an item; others' annotations are never returned (blind review)."""
    try:
        return Annotation.objects.select_related("item", "rubric_version").get(
            item_id=item_id, item__project=project, reviewer=user
        )
    except Annotation.DoesNotExist:
        raise Http404("You have not annotated this item.") from None


def annotation_recent_for_reviewer(*, user, project: Project, limit: int = 10) -> list[Annotation]:
    """The user's latest annotations in the project, newest first (their own only)."""
    return list(
        Annotation.objects.filter(reviewer=user, item__project=project)
        .select_related("item")
        .order_by("-updated_at")[:limit]
    )


def queue_progress(*, project: Project, user) -> dict:
    """The progress bar: the user's items done today, project completion, and items still needing them."""
    now = timezone.now()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    k = project.overlap_k
    items = Item.objects.filter(project=project, is_calibration=False)
    total = items.count()
    submitted = Lease.objects.filter(project=project, status=Lease.Status.SUBMITTED).count()
    open_items = items.filter(review_count__lt=k)
    blocked = [TaskKind.RUBRIC] if queue_blocked_reason(project=project) else []
    if blocked:
        open_items = open_items.exclude(kind__in=blocked)
    mine = Lease.objects.filter(
        item__in=open_items, reviewer=user, status__in=[Lease.Status.ACTIVE, Lease.Status.SUBMITTED]
    )
    # Items on screen or prefetched still need this reviewer, wherever their count stands.
    holding = Lease.objects.filter(project=project, reviewer=user, status=Lease.Status.ACTIVE).count()
    needing_me = open_items.count() - mine.count() + holding
    return {
        "done_today": Annotation.objects.filter(reviewer=user, item__project=project, created_at__gte=midnight).count(),
        "submitted": submitted,
        "needed": total * k,
        "completion_pct": round(100 * submitted / (total * k), 1) if total else 0.0,
        "left_for_me": max(needing_me, 0),
    }


def queue_health(*, project: Project, now=None) -> dict:
    """Queue health for admins: items by state, leases out, per-reviewer throughput and median time."""
    now = now or timezone.now()
    k = project.overlap_k
    items = Item.objects.filter(project=project, is_calibration=False)
    total = items.count()
    touched = items.filter(review_count__gt=0).count()
    complete = (
        Lease.objects.filter(project=project, status=Lease.Status.SUBMITTED, item__is_calibration=False)
        .values("item_id")
        .annotate(n=Count("id"))
        .filter(n__gte=k)
        .count()
    )
    per_item = {
        "total": total,
        "complete": complete,
        "in_progress": touched - complete,
        "untouched": total - touched,
    }
    active = Lease.objects.filter(project=project, status=Lease.Status.ACTIVE)
    # The table shows the 200 leases closest to expiry; the counts cover all of them.
    leases = list(active.select_related("reviewer", "item").order_by("expires_at")[:200])
    hour_ago, day_ago = now - timedelta(hours=1), now - timedelta(days=1)
    rows = []
    for reviewer_id, username in (
        Annotation.objects.filter(item__project=project)
        .values_list("reviewer_id", "reviewer__username")
        .distinct()
        .order_by("reviewer__username")
    ):
        mine = Annotation.objects.filter(item__project=project, reviewer_id=reviewer_id)
        durations = [d for d in mine.filter(created_at__gte=day_ago).values_list("duration_ms", flat=True) if d]
        rows.append(
            {
                "username": username,
                "total": mine.count(),
                "last_hour": mine.filter(created_at__gte=hour_ago).count(),
                "last_day": mine.filter(created_at__gte=day_ago).count(),
                "median_seconds": round(statistics.median(durations) / 1000, 1) if durations else None,
            }
        )
    return {
        "items": per_item,
        "leases_out": active.filter(expires_at__gt=now).count(),
        "leases_stale": active.filter(expires_at__lte=now).count(),
        "leases": leases,
        "reviewers": rows,
        "members": list(project.members.order_by("username")),
        "flags_open": Flag.objects.filter(item__project=project, resolved=False).count(),
        "now": now,
    }


def import_batch_get_for_admin(*, user, slug: str, batch_id: int) -> ImportBatch:
    """An import of the project, for admins; 404 when it belongs to another project."""
    project = project_get_for_admin(user=user, slug=slug)
    try:
        return ImportBatch.objects.select_related("project", "uploaded_by").get(project=project, id=batch_id)
    except ImportBatch.DoesNotExist:
        raise Http404("No such import.") from None


def import_batch_list(*, project: Project, limit: int = 20) -> QuerySet[ImportBatch]:
    """The project's latest imports, newest first."""
    return project.imports.select_related("uploaded_by").order_by("-created_at", "-id")[:limit]


def flag_list_for_admin(*, project: Project, state: str = "open", q: str = "") -> QuerySet[Flag]:
    """The project's flags, newest first: ``open``, ``resolved`` or every one; searched by reason, prompt or
    reviewer."""
    flags = Flag.objects.filter(item__project=project).select_related("item", "reviewer", "resolved_by")
    if state == "open":
        flags = flags.filter(resolved=False)
    elif state == "resolved":
        flags = flags.filter(resolved=True)
    if q:
        flags = flags.filter(Q(reason__icontains=q) | Q(item__prompt__icontains=q) | Q(reviewer__username__icontains=q))
    return flags.order_by("-created_at", "-id")


def item_list_for_user(
    *, user, slug: str, split: str = "", kind: str = "", q: str = ""
) -> tuple[Project, QuerySet[Item]]:
    """The project's items a member may browse, optionally filtered by split and kind and searched by prompt
    text ("#12" or "12" finds item 12 as well)."""
    project = project_get_for_user(user=user, slug=slug)
    items = Item.objects.filter(project=project).order_by("id")
    if split:
        items = items.filter(split=split)
    if kind:
        items = items.filter(kind=kind)
    if q:
        match = Q(prompt__icontains=q)
        if q.lstrip("#").isdigit():
            match |= Q(pk=int(q.lstrip("#")))
        items = items.filter(match)
    return project, items


# --- Agreement reports ---------------------------------------------------------------------------------


def report_fingerprint(*, project: Project, rubric_version: RubricVersion | None) -> tuple[str, int]:
    """A digest of what the report depends on, and the number of annotations it covers."""
    annotations = Annotation.objects.filter(item__project=project, item__is_calibration=False)
    results = ItemResult.objects.filter(item__project=project)
    # The page asks for this digest on every load: rows are found by item id where they can be.
    run = report_reader.item_run(project)
    if run:
        in_run = {"item__gte": run["low"], "item__lte": run["high"]}
        results = ItemResult.objects.filter(**in_run)
        if not run["calibration"]:
            annotations = Annotation.objects.filter(**in_run)
    annotations = annotations.aggregate(n=Count("id"), last=Max("updated_at"))
    results = results.aggregate(n=Count("id"), last=Max("updated_at"))
    checks = Item.objects.filter(project=project, is_check=True).aggregate(n=Count("id"), last=Max("id"))
    state = (
        f"{annotations['n']}|{annotations['last']}|{results['n']}|{results['last']}|{checks['n']}|{checks['last']}"
        f"|{rubric_version.pk if rubric_version else ''}|{project.score_tolerance}"
    )
    return hashlib.sha256(state.encode()).hexdigest(), annotations["n"]


def agreement_report_for_fingerprint(
    *, project: Project, rubric_version: RubricVersion | None, fingerprint: str
) -> AgreementReport | None:
    """The report made for exactly this state of the data, unless it failed."""
    return (
        AgreementReport.objects.filter(project=project, rubric_version=rubric_version, fingerprint=fingerprint)
        .exclude(status=AgreementReport.Status.FAILED)
        .order_by("-created_at", "-id")
        .first()
    )


def agreement_report_get(*, project: Project, report_id) -> AgreementReport | None:
    """A report of the project by id; None for an id that is not a number or not one of the project's."""
    try:
        pk = int(report_id)
    except (TypeError, ValueError):
        return None
    return AgreementReport.objects.filter(project=project, pk=pk).select_related("rubric_version").first()


def agreement_report_current(
    *, project: Project, rubric_version: RubricVersion | None = None
) -> tuple[RubricVersion | None, AgreementReport | None, AgreementReport | None]:
    """For the report page (reads only): the rubric version it covers, the report of the data as it is now
    (None when none was made yet), and the newest report of any state (the latest failure included)."""
    version = report_rubric_version(project=project, rubric_version=rubric_version)
    fingerprint, _ = report_fingerprint(project=project, rubric_version=version)
    current = agreement_report_for_fingerprint(project=project, rubric_version=version, fingerprint=fingerprint)
    latest = (
        AgreementReport.objects.filter(project=project, rubric_version=version).order_by("-created_at", "-id").first()
    )
    return version, current, latest


def rubric_version_get(*, project: Project, version_id) -> RubricVersion:
    """A rubric version of the project, or 404."""
    try:
        return RubricVersion.objects.select_related("rubric").get(pk=int(version_id), rubric__project=project)
    except (TypeError, ValueError, RubricVersion.DoesNotExist):
        raise Http404("No such rubric version in this project.") from None


def rubric_versions_of(*, project: Project) -> QuerySet[RubricVersion]:
    """Every rubric version of the project, by rubric and number."""
    return RubricVersion.objects.filter(rubric__project=project).select_related("rubric")


# --- Rubrics, calibration and check items -----------------------------------------------------------------


def rubric_list_for_project(*, project: Project) -> QuerySet[Rubric]:
    """The project's rubrics with their versions and sign-offs."""
    return Rubric.objects.filter(project=project).prefetch_related("versions__signoffs")


def rubric_get(*, project: Project, rubric_id: int) -> Rubric:
    """A rubric of the project, or 404."""
    try:
        return Rubric.objects.get(pk=rubric_id, project=project)
    except Rubric.DoesNotExist:
        raise Http404("No such rubric in this project.") from None


def rubric_version_latest(*, rubric: Rubric) -> RubricVersion | None:
    return rubric.versions.order_by("-number").first()


def calibration_reviewers(*, project: Project) -> QuerySet:
    """Members who score: everyone on the project in the reviewer group."""
    return (
        get_user_model().objects.filter(goldset_projects=project, groups__name=roles.REVIEWER).distinct().order_by("id")
    )


def calibration_items(*, project: Project) -> QuerySet[Item]:
    return Item.objects.filter(project=project, is_calibration=True, kind=TaskKind.RUBRIC).order_by("id")


def calibration_item_get(*, project: Project, item_id: int) -> Item:
    try:
        return calibration_items(project=project).get(pk=item_id)
    except Item.DoesNotExist:
        raise Http404("No such calibration item.") from None


def member_by_username(*, project: Project, username: str):
    """A member of the project by username, or None."""
    return project.members.filter(username=username).first()


def rubric_signoffs(*, version: RubricVersion) -> QuerySet[RubricSignoff]:
    """Who signed a version off, in order."""
    return RubricSignoff.objects.filter(version=version).select_related("reviewer").order_by("created_at")


def project_has_member(*, project: Project, user) -> bool:
    return project.members.filter(pk=user.pk).exists()


def calibration_scores_of(*, item: Item, user, version: RubricVersion) -> dict:
    """The user's own calibration scores of an item under a version ({} when none)."""
    mine = Annotation.objects.filter(item=item, reviewer=user, rubric_version=version).first()
    return (mine.payload.get("scores") or {}) if mine else {}


def item_get_in_project(*, project: Project, item_id) -> Item:
    """An item of the project, or 404 (also for an id that is not a number)."""
    try:
        return Item.objects.get(pk=int(item_id), project=project)
    except (TypeError, ValueError, Item.DoesNotExist):
        raise Http404(f"Item {item_id!r} is not an item of this project.") from None


def check_items(*, project: Project) -> QuerySet[Item]:
    """The project's known-answer check items, newest first."""
    return Item.objects.filter(project=project, is_check=True).order_by("-id")


def check_item_candidates(*, project: Project, limit: int = 50) -> QuerySet[ItemResult]:
    """Decided items an admin may turn into check items (their agreed answer becomes the known one)."""
    return ItemResult.objects.filter(
        item__project=project,
        item__is_check=False,
        item__is_calibration=False,
        status__in=[ItemResult.Status.CONSENSUS, ItemResult.Status.ADJUDICATED],
    ).select_related("item")[:limit]


# --- Adjudication ---------------------------------------------------------------------------------------


def adjudication_view_of(*, item: Item) -> dict:
    """Everything an adjudicator weighs for one item: the reviews that count, the result and earlier decisions."""
    annotations = list(Annotation.objects.filter(item=item).select_related("reviewer", "rubric_version"))
    version = None
    if item.kind == TaskKind.RUBRIC:
        annotations, version = latest_version_annotations(annotations)
    return {
        "annotations": sorted(annotations, key=lambda a: a.reviewer.get_username()),
        "criteria": version.criteria if version else [],
        "result": ItemResult.objects.filter(item=item).first(),
        "history": Adjudication.objects.filter(item=item).select_related("adjudicator").order_by("-created_at"),
    }


def annotation_of_item(*, item: Item, annotation_id) -> Annotation:
    """One review of the item (for an adjudicator adopting it), or ValidationError naming what to do."""
    try:
        return Annotation.objects.get(pk=int(annotation_id), item=item)
    except (TypeError, ValueError, Annotation.DoesNotExist):
        raise ValidationError("Choose one of the reviews shown, or write your own decision.") from None


# --- API tokens and members -------------------------------------------------------------------------------


def api_token_list_for_user(*, user) -> QuerySet[ApiToken]:
    """The user's own tokens, newest first (never anyone else's)."""
    return ApiToken.objects.filter(user=user).order_by("-created_at", "-id")


def api_token_authenticate(*, token: str, now=None) -> tuple[ApiToken | None, str]:
    """The live token row for a presented token, or None with the reason in words (unknown, revoked, expired)."""
    prefix = token_prefix(token)
    row = ApiToken.objects.select_related("user").filter(prefix=prefix).first() if prefix else None
    # Compared in constant time: the prefix is public, the digest must not leak through timing.
    if row is None or not hmac.compare_digest(row.digest, token_digest(token)):
        return None, "The API token is not known: check it, or make a new one on your API tokens page."
    if row.revoked_at is not None:
        return None, "The API token was revoked: make a new one on your API tokens page."
    if row.expires_at is not None and row.expires_at <= (now or timezone.now()):
        return None, "The API token has expired: make a new one on your API tokens page."
    if not row.user.is_active:
        return None, "The API token's user is deactivated."
    return row, ""


def user_roles(*, user) -> list[str]:
    """The user's roles (site-wide groups), in the order reviewer, adjudicator, admin."""
    if user.is_superuser:
        return list(roles.ROLES)
    names = set(user.groups.values_list("name", flat=True))
    return [role for role in roles.ROLES if role in names]


def project_members_with_roles(*, project: Project) -> list[tuple]:
    """The project's members, by username, each with their roles."""
    members = list(project.members.order_by("username").prefetch_related("groups"))
    result = []
    for member in members:
        names = {g.name for g in member.groups.all()}
        result.append((member, list(roles.ROLES) if member.is_superuser else [r for r in roles.ROLES if r in names]))
    return result


def user_by_username(*, username: str):
    """An active user by username, or 404."""
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise Http404(f"No active user named {username!r}.")
    return user


# --- The API's reads ---------------------------------------------------------------------------------------


def item_browse_for_user(
    *,
    user,
    slug: str,
    split: str = "",
    kind: str = "",
    provenance: str = "",
    state: str = "",
    import_batch_id: int | None = None,
) -> tuple[Project, QuerySet[Item], bool]:
    """The project's items a member may browse, filtered, and whether the user may see their states.

    An item's state (its result: pending, consensus, disputed, adjudicated; "unreviewed" before any
    review) tells how other reviewers judged it, so only admins and adjudicators see or filter by it."""
    project, items = item_list_for_user(user=user, slug=slug, split=split, kind=kind)
    sees_state = roles.is_admin(user) or roles.is_adjudicator(user)
    if state and not sees_state:
        raise PermissionDenied("Filtering items by state is for admins and adjudicators.")
    if provenance:
        items = items.filter(provenance=provenance)
    if import_batch_id is not None:
        items = items.filter(import_batch_id=import_batch_id)
    if state == "unreviewed":
        items = items.filter(result__isnull=True)
    elif state:
        items = items.filter(result__status=state)
    if sees_state:
        items = items.select_related("result")
    return project, items, sees_state


def import_batches_of(*, project: Project) -> QuerySet[ImportBatch]:
    """Every import of the project."""
    return ImportBatch.objects.filter(project=project).select_related("project")


def import_batch_errors_iter(*, batch: ImportBatch):
    """Every rejected row's errors as {line, field, message}, read from the import's error report (the batch
    row keeps only the first errors); a file rejected as a whole has only the error on the batch."""
    path = rejected_errors_path(batch.rejected_path)
    if path is None or not path.exists():
        for error in batch.errors:
            if error.get("kind") != "duplicate":
                yield {"line": error.get("line"), "field": error.get("field", ""), "message": error.get("message", "")}
        return
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle)
        next(rows, None)  # the header: line, rejected_file_line, field, error
        for line, _, field_name, message in rows:
            yield {"line": int(line), "field": csvwriter.read_cell(field_name), "message": csvwriter.read_cell(message)}


def user_or_none_by_username(*, username: str):
    """An active user by username, or None."""
    return get_user_model().objects.filter(username=username, is_active=True).first()


def admin_action_list_for_admin(*, user, action: str = "", project_slug: str = "") -> QuerySet:
    """The admin action log, newest first, optionally of one kind of action or one project: admins only."""
    from annotate.models import AdminAction

    if not roles.is_admin(user):
        raise PermissionDenied("Only admins can read the admin action log.")
    entries = AdminAction.objects.select_related("project").order_by("-at", "-id")
    if action:
        entries = entries.filter(action=action)
    if project_slug:
        entries = entries.filter(project__slug=project_slug)
    return entries
