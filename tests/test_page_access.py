"""Who may open every page, and who may post to it: one table, every URL pattern, five kinds of caller.

The patterns are read from the URL resolver, so a page added without a row in ``RULES`` fails
``test_every_page_has_a_rule`` (the API has its own matrix in tests/api/test_access_matrix.py; Django's
admin site is checked model by model below). Each row names, per method, who may use it:

- ``public``: anyone, signed in or not;
- ``user``: anyone signed in;
- ``member``: members of the project, and admins;
- ``adjudicator``: members who adjudicate, and admins;
- ``admin``: admins; a member without the role gets 403, a non-member 404 (no existence leak);
- ``staff``: admins, on pages outside any project (training, snapshots): everyone else gets 403;
- ``evalsets``: admins, and members when the project shares its eval sets (this one does not: 403);
- ``None``: the method is not served (405 for a signed-in caller).

A refused caller gets 403 or 404 (or, signed out, the login page) and nothing changes; an allowed one gets
past the permission check: no 403, 404, 405 or 5xx. Every request runs in a savepoint that is rolled back, so
one caller's POST does not change what the next one sees.
"""

import io
import itertools
from html.parser import HTMLParser

import pytest
from django.contrib import admin as django_admin
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from annotate.models import Item, ItemResult, Rubric, RubricVersion
from annotate.services import imports as import_services
from annotate.services import queue
from annotate.services.reports import agreement_report_request
from annotate.services.results import item_result_refresh
from annotate.services.tokens import api_token_create
from tests.factories import CRITERIA, annotate, gold, make_item, pref

pytestmark = pytest.mark.django_db

ROLES = ["anonymous", "outsider", "reviewer", "adjudicator", "admin"]
WHO = {
    "public": set(ROLES),
    "user": {"outsider", "reviewer", "adjudicator", "admin"},
    "member": {"reviewer", "adjudicator", "admin"},
    "adjudicator": {"adjudicator", "admin"},
    "admin": {"admin"},
    "staff": {"admin"},
    "evalsets": {"admin"},
}
# Project pages refuse a non-member with 404 (the project does not exist for them); pages outside a project 403.
NOT_IN_PROJECT = {"member", "adjudicator", "admin", "evalsets"}

GET_ONLY = {"GET": None}

# URL name -> {"GET": who, "POST": who}; a method left out is not served.
RULES: dict[str, dict[str, str | None]] = {
    "login": {"GET": "public", "POST": "public"},
    "logout": {"GET": None, "POST": "user"},
    "health": {"GET": "public", "POST": None},
    # annotate: projects, members, tokens
    "annotate:project-list": {"GET": "user", "POST": None},
    "annotate:project-new": {"GET": "staff", "POST": "staff"},
    "annotate:project-detail": {"GET": "member", "POST": None},
    "annotate:project-settings": {"GET": "admin", "POST": "admin"},
    "annotate:project-members": {"GET": "admin", "POST": "admin"},
    "annotate:project-member-remove": {"GET": None, "POST": "admin"},
    "annotate:annotation-export": {"GET": "admin", "POST": None},
    "annotate:token-list": {"GET": "user", "POST": "user"},
    "annotate:token-revoke": {"GET": None, "POST": "user"},
    "annotate:admin-log": {"GET": "staff", "POST": None},
    # rubrics, calibration, checks
    "annotate:rubric-list": {"GET": "member", "POST": None},
    "annotate:rubric-new": {"GET": None, "POST": "admin"},
    "annotate:rubric-version-new": {"GET": "admin", "POST": "admin"},
    "annotate:rubric-version": {"GET": "member", "POST": None},
    "annotate:rubric-version-propose": {"GET": None, "POST": "admin"},
    "annotate:rubric-version-signoff": {"GET": None, "POST": "member"},
    "annotate:rubric-version-activate": {"GET": None, "POST": "admin"},
    "annotate:rubric-version-send-back": {"GET": None, "POST": "admin"},
    "annotate:calibration": {"GET": "member", "POST": None},
    "annotate:calibration-item-add": {"GET": None, "POST": "admin"},
    "annotate:calibration-score": {"GET": None, "POST": "member"},
    "annotate:checks": {"GET": "admin", "POST": "admin"},
    # agreement report (names reviewers): adjudicators and admins
    "annotate:report": {"GET": "adjudicator", "POST": None},
    "annotate:report-compute": {"GET": None, "POST": "adjudicator"},
    "annotate:report-refresh": {"GET": None, "POST": "admin"},
    "annotate:report-csv": {"GET": "adjudicator", "POST": None},
    "annotate:report-json": {"GET": "adjudicator", "POST": None},
    "annotate:adjudication-queue": {"GET": "adjudicator", "POST": None},
    "annotate:adjudication-item": {"GET": "adjudicator", "POST": "adjudicator"},
    # the review queue
    "annotate:queue": {"GET": "member", "POST": None},
    "annotate:queue-next": {"GET": "member", "POST": None},
    "annotate:queue-progress": {"GET": "member", "POST": None},
    "annotate:queue-undo": {"GET": None, "POST": "member"},
    "annotate:queue-submit": {"GET": None, "POST": "member"},
    "annotate:queue-skip": {"GET": None, "POST": "member"},
    "annotate:queue-flag": {"GET": None, "POST": "member"},
    "annotate:annotation-history": {"GET": "member", "POST": "member"},
    "annotate:queue-health": {"GET": "admin", "POST": None},
    "annotate:queue-lease-expire": {"GET": None, "POST": "admin"},
    "annotate:queue-lease-reassign": {"GET": None, "POST": "admin"},
    # imports
    "annotate:item-list": {"GET": "member", "POST": None},
    "annotate:import-new": {"GET": "admin", "POST": "admin"},
    "annotate:import-detail": {"GET": "admin", "POST": None},
    "annotate:import-progress": {"GET": "admin", "POST": None},
    "annotate:import-retry": {"GET": None, "POST": "admin"},
    "annotate:import-rejected": {"GET": "admin", "POST": None},
    "annotate:import-rejected-errors": {"GET": "admin", "POST": None},
    # eval sets
    "evalsets:evalset-list": {"GET": "user", "POST": None},
    "evalsets:evalset-freeze": {"GET": "admin", "POST": "admin"},
    "evalsets:version-detail": {"GET": "evalsets", "POST": None},
    "evalsets:version-export": {"GET": "evalsets", "POST": None},
    "evalsets:version-export-manifest": {"GET": "evalsets", "POST": None},
    "evalsets:snapshot-list": {"GET": "staff", "POST": None},
    "evalsets:snapshot-contamination": {"GET": "staff", "POST": None},
    "evalsets:snapshot-contamination-check": {"GET": None, "POST": "staff"},
    # training: admins only, outside any project
    "training:job-list": {"GET": "staff", "POST": None},
    "training:snapshot-list": {"GET": "staff", "POST": "staff"},
    "training:snapshot-detail": {"GET": "staff", "POST": None},
    "training:snapshot-rewrite-tasks": {"GET": None, "POST": "staff"},
    "training:snapshot-audit": {"GET": None, "POST": "staff"},
    "training:snapshot-diff": {"GET": "staff", "POST": None},
    "training:audit-detail": {"GET": "staff", "POST": None},
    "training:audit-acknowledge": {"GET": None, "POST": "staff"},
    "training:audit-finding-action": {"GET": None, "POST": "staff"},
    "training:job-new": {"GET": "staff", "POST": "staff"},
    "training:preflight-detail": {"GET": "staff", "POST": None},
    "training:preflight-queue": {"GET": None, "POST": "staff"},
    "training:job-detail": {"GET": "staff", "POST": None},
    "training:job-cancel": {"GET": None, "POST": "staff"},
    "training:job-retry": {"GET": None, "POST": "staff"},
    "training:job-resume": {"GET": None, "POST": "staff"},
    "training:job-download": {"GET": "staff", "POST": None},
    # flags and contamination check runs
    "annotate:flag-list": {"GET": "admin", "POST": None},
    "annotate:flag-resolve": {"GET": None, "POST": "admin"},
    "evalsets:contamination-run": {"GET": "staff", "POST": None},
    # judging: admins only (project checks inside a project)
    "judging:run-list": {"GET": "staff", "POST": "staff"},
    "judging:run-detail": {"GET": "staff", "POST": None},
    "judging:run-cancel": {"GET": None, "POST": "staff"},
    "judging:run-retry": {"GET": None, "POST": "staff"},
    "judging:comparison-list": {"GET": "staff", "POST": "staff"},
    "judging:comparison-detail": {"GET": "staff", "POST": None},
    "judging:model-card": {"GET": "staff", "POST": None},
    "judging:model-card-markdown": {"GET": "staff", "POST": None},
    "judging:regression-start": {"GET": None, "POST": "staff"},
    "judging:project-checks": {"GET": "admin", "POST": "admin"},
}

# Served by other tests: the REST API (its own matrix) and Django's admin site (below, model by model).
ELSEWHERE = {"api", "admin"}


def page_patterns() -> dict[str, URLPattern]:
    """Every named page pattern outside the API and the admin site, by its full name."""
    found: dict[str, URLPattern] = {}

    def walk(entries, namespace):
        for entry in entries:
            if isinstance(entry, URLResolver):
                if entry.namespace in ELSEWHERE:
                    continue
                walk(entry.url_patterns, entry.namespace or namespace)
            elif isinstance(entry, URLPattern):
                if str(entry.pattern).startswith("^api/"):
                    continue  # the API's catch-all for unknown paths (tests/api)
                assert entry.name, f"{entry.pattern} has no name: name it so the access table can list it"
                found[f"{namespace}:{entry.name}" if namespace else entry.name] = entry

    walk(get_resolver().url_patterns, None)
    return found


def test_every_page_has_a_rule():
    served = set(page_patterns())
    assert served - set(RULES) == set(), "pages without an access rule: add a row to RULES"
    assert set(RULES) - served == set(), "rules for pages that no longer exist"


@pytest.fixture
def world(project, alice, bob, judge, admin_user, mallory, settings, tmp_path):
    """Something behind every page: items and a lease per caller, a dispute, a rubric, an import, an eval set
    version, snapshots with an audit, a preflight and a job, and a token per caller."""
    from evalsets.services import evalset_freeze
    from training.models import JobProgress, SnapshotAudit, TrainingJob, TrainingPreflight, TrainingSnapshot

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    disputed = make_item(project, "preference", prompt="Which is better?")
    annotate(disputed, alice, pref(chosen=0, rejected=1))
    annotate(disputed, bob, pref("both_bad"))
    assert item_result_refresh(item=disputed).status == ItemResult.Status.DISPUTED
    project.overlap_k = 5
    project.save()
    users = {"anonymous": None, "outsider": mallory, "reviewer": alice, "adjudicator": judge, "admin": admin_user}
    callers = [alice, judge, admin_user]

    # Every caller has annotated the history item and holds a lease.
    history = make_item(project, "gold", prompt="History item")
    for user in callers:
        annotate(history, user, gold("write", "An answer."))
    for _ in range(4):
        make_item(project, "gold")
    leases = {
        role: queue.lease_next_for_reviewer(project=project, reviewer=users[role])
        for role in users
        if role in {"reviewer", "adjudicator", "admin"}
    }
    leases["outsider"] = leases["anonymous"] = leases["reviewer"]

    rubric = Rubric.objects.create(project=project, name="Quality")
    version = RubricVersion.objects.create(rubric=rubric, number=1, criteria=CRITERIA)
    calibration_item = make_item(project, "rubric", is_calibration=True)

    batch = import_services.import_batch_create(
        project=project,
        uploaded_by=admin_user,
        filename="seed.jsonl",
        upload=io.BytesIO(import_services.sample_bytes([{"prompt": "ok"}, {"prompt": ""}])),
        mode="skip_bad",
    )
    batch = import_services.import_batch_run(batch_id=batch.pk)

    eval_item = make_item(project, "gold", prompt="An eval prompt", split="eval")
    answer = gold("write", "The eval answer.")
    for user in (alice, bob):
        annotate(eval_item, user, answer)
    ItemResult.objects.create(
        item=eval_item, kind="gold", status="consensus", payload=answer, agreement=1.0, reviewer_ids=[alice.pk, bob.pk]
    )
    evalset = evalset_freeze(project=project, user=admin_user, changelog="first").version

    snapshot = TrainingSnapshot.objects.create(name="support v1", sha256="a" * 64)
    other = TrainingSnapshot.objects.create(name="support v2", sha256="b" * 64)
    audit = SnapshotAudit.objects.create(
        snapshot=snapshot,
        report={
            "findings": [
                {
                    "key": "phrase:thanks",
                    "type": "recurring_closing",
                    "title": "100% of answers end with “thanks!”",
                    "phrase": "thanks!",
                    "count": 1,
                }
            ]
        },
    )
    adapter = tmp_path / "artifacts" / "job-1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "manifest.json").write_text("{}")
    job = TrainingJob.objects.create(
        snapshot=snapshot,
        base_model="tiny",
        method="sft",
        config={},
        output_dir=str(adapter.parent),
        status="succeeded",
    )
    # A loss curve on the job's page.
    for step, loss in ((1, 2.5), (2, 1.9), (3, 1.4)):
        JobProgress.objects.create(job=job, phase="sft", step=step, total_steps=3, loss=loss, learning_rate=2e-4)
    preflight = TrainingPreflight.objects.create(snapshot=snapshot, base_model="tiny", method="sft", config={})
    from annotate.models import Flag, Project
    from evalsets.judging.models import Comparison, GenerationRun
    from evalsets.models import ContaminationCheckRun

    flag = Flag.objects.create(item=history, reviewer=alice, reason="The prompt is unclear.")
    check_run = ContaminationCheckRun.objects.create(snapshot=snapshot)
    runs = [
        GenerationRun.objects.create(
            evalset_version=evalset, label=label, base_model="tiny", decoding={}, status="succeeded"
        )
        for label in ("base", "tuned")
    ]
    compared = Project.objects.create(name="Comparison", slug="compare-0", task_kinds=["preference"])
    comparison = Comparison.objects.create(name="base vs tuned", run_a=runs[0], run_b=runs[1], project=compared, seed=1)

    tokens = {role: api_token_create(user=u, name=role, scope="read")[0] for role, u in users.items() if u}
    tokens["anonymous"] = tokens["reviewer"]
    values = {
        "slug": lambda role: project.slug,
        "username": lambda role: "bob",
        "token_id": lambda role: tokens[role].pk,
        "lease_id": lambda role: leases[role].pk,
        "rubric_id": lambda role: rubric.pk,
        "annotate:version_id": lambda role: version.pk,
        "annotate:item_id": lambda role: history.pk,
        "annotate:fmt": lambda role: "csv",
        "batch_id": lambda role: batch.pk,
        "evalsets:version_id": lambda role: evalset.pk,
        "evalsets:fmt": lambda role: "goldset",
        "snapshot_id": lambda role: snapshot.pk,
        "other_id": lambda role: other.pk,
        "audit_id": lambda role: audit.pk,
        "preflight_id": lambda role: preflight.pk,
        "job_id": lambda role: job.pk,
        "flag_id": lambda role: flag.pk,
        "evalsets:run_id": lambda role: check_run.pk,
        "judging:run_id": lambda role: runs[0].pk,
        "comparison_id": lambda role: comparison.pk,
    }
    # Item arguments that must point at a particular kind of item.
    items = {
        "annotate:adjudication-item": disputed.pk,
        "annotate:calibration-score": calibration_item.pk,
    }
    agreement_report_request(project=project)  # last: it is made for the data as they are now
    return {"users": users, "values": values, "items": items, "project": project}


def url_for(name: str, pattern: URLPattern, world, role: str) -> str:
    namespace = name.split(":")[0] if ":" in name else ""
    kwargs = {}
    for arg in pattern.pattern.converters:
        if arg == "item_id" and name in world["items"]:
            kwargs[arg] = world["items"][name]
            continue
        make = world["values"].get(f"{namespace}:{arg}") or world["values"].get(arg)
        assert make, f"{name} takes {arg}: give this test a value for it"
        kwargs[arg] = make(role)
    return reverse(name, kwargs=kwargs)


class _Rollback(Exception):
    pass


# Form values a POST needs to reach past its permission check to the object it acts on.
POST_DATA = {"training:audit-finding-action": "finding=phrase%3Athanks&action=none"}


def request(client, method: str, url: str, data: str = ""):
    """The response to one request, with whatever it wrote to the database undone."""
    response = None
    try:
        with transaction.atomic():
            response = client.generic(method, url, data, content_type="application/x-www-form-urlencoded")
            raise _Rollback
    except _Rollback:
        pass
    return response


def expected_refusal(who: str, role: str) -> int:
    if role == "outsider" and who in NOT_IN_PROJECT:
        return 404
    return 403


@pytest.mark.parametrize("name", sorted(RULES))
def test_who_may_use_each_page(client, world, name):
    pattern = page_patterns()[name]
    login_url = reverse("login")
    failures = []
    for role, method in itertools.product(ROLES, ("GET", "POST")):
        who = RULES[name].get(method)
        user = world["users"][role]
        client.logout()
        if user is not None:
            client.force_login(user)
        url = url_for(name, pattern, world, role)
        response = request(client, method, url, POST_DATA.get(name, "") if method == "POST" else "")
        status = response.status_code
        login_not_required = "public" in RULES[name].values()
        signed_out = status == 302 and response.url.startswith(login_url)
        if role == "anonymous" and who != "public" and not (who is None and login_not_required):
            ok = signed_out
            want = "the login page"
        elif who is None:
            ok, want = status == 405, "405"
        elif role in WHO[who]:
            ok = status < 500 and status not in {401, 403, 404, 405} and (name == "logout" or not signed_out)
            want = "allowed"
        else:
            want_status = expected_refusal(who, role)
            ok, want = status == want_status, str(want_status)
        if not ok:
            failures.append(f"{method} {url} as {role}: {status}, expected {want}")
        failures += csp_problems(response, f"{method} {url} as {role}")
    assert failures == []


class _InlineCode(HTMLParser):
    """Collects what a Content-Security-Policy without 'unsafe-inline' would block: inline scripts, event
    handler attributes, style attributes and elements, and javascript: URLs."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name, value in attrs.items():
            if name.startswith(("on", "hx-on")) or name == "style":
                self.found.append(f"<{tag} {name}=...>")
            if name in {"href", "src", "action"} and (value or "").strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag} {name}=javascript:...>")
        if tag == "style":
            self.found.append("<style>")
        if tag == "script" and "src" not in attrs and attrs.get("type") != "application/json":
            self.found.append("inline <script>")


def csp_problems(response, where: str) -> list[str]:
    """For an HTML answer: the policy header is there and strict, and the page holds no code it would block."""
    if not response.get("Content-Type", "").startswith("text/html") or response.streaming:
        return []
    problems = []
    policy = response.get("Content-Security-Policy", "")
    if "script-src 'self'" not in policy or "style-src 'self'" not in policy or "unsafe-" in policy:
        problems.append(f"{where}: Content-Security-Policy is {policy!r}")
    parser = _InlineCode()
    parser.feed(response.content.decode("utf-8", "replace"))
    problems += [f"{where}: {what}" for what in parser.found]
    return problems


def test_the_admin_site_is_for_admins_only(client, world):
    """Django's admin site: every registered model's list and add page, staff (Goldset admins) only."""
    urls = [reverse("admin:index")]
    for model in django_admin.site._registry:
        opts = model._meta
        urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
    admin_login = reverse("admin:login")
    for role, user in world["users"].items():
        client.logout()
        if user is not None:
            client.force_login(user)
        for url in urls:
            response = client.get(url)
            if role == "admin":
                assert response.status_code in {200, 403}, (url, response.status_code)
            else:
                # Signed out: the site's login page first (every page needs a login); signed in: the admin's.
                login_pages = (reverse("login"), admin_login) if user is None else (admin_login,)
                assert response.status_code == 302, (role, url, response.status_code)
                assert response.url.startswith(login_pages), (role, url, response.url)


def test_a_refused_post_changes_nothing(client, world):
    """The member list's remove button, posted by a reviewer and an outsider, leaves the member in place."""
    project = world["project"]
    for role in ("reviewer", "outsider"):
        client.force_login(world["users"][role])
        response = client.post(reverse("annotate:project-member-remove", args=[project.slug, "bob"]))
        assert response.status_code in {403, 404}
        assert project.members.filter(username="bob").exists()
    assert Item.objects.filter(project=project).exists()


# --- CSRF --------------------------------------------------------------------------------------------


def _row_counts() -> dict[str, int]:
    from django.apps import apps

    return {m._meta.label: m._default_manager.count() for m in apps.get_models() if m._meta.managed}


def _allowed_caller(who: str) -> str:
    return "anonymous" if who == "public" else "admin"


@pytest.mark.parametrize("name", sorted(n for n, rule in RULES.items() if rule.get("POST")))
def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(world, name):
    """Every page that takes a POST, posted by a caller it allows, from a browser that sends no CSRF token."""
    client = Client(enforce_csrf_checks=True)
    role = _allowed_caller(RULES[name]["POST"])
    if world["users"][role] is not None:
        client.force_login(world["users"][role])
    before = _row_counts()
    url = url_for(name, page_patterns()[name], world, role)
    response = client.post(url, {"name": "x", "answer": "x", "action": "write"})
    assert response.status_code == 403, (url, response.status_code)
    assert b"CSRF" in response.content
    assert _row_counts() == before


def test_the_api_refuses_unsafe_calls_by_a_session_without_the_csrf_token(world):
    """A signed-in browser session (the API's docs page) must send the token; a bearer token needs none."""
    from tests.api.test_access_matrix import api_operations

    client = Client(enforce_csrf_checks=True)
    client.force_login(world["users"]["admin"])
    values = {k: make("admin") for k, make in world["values"].items() if ":" not in k}
    values["version_id"] = world["values"]["annotate:version_id"]("admin")
    before = _row_counts()
    unsafe = [(m, p) for m, p in api_operations() if m not in {"GET", "HEAD", "OPTIONS"}]
    assert unsafe
    for method, path in unsafe:
        response = client.generic(method, "/api/v1" + path.format(**values), "{}", content_type="application/json")
        assert response.status_code == 403, (method, path, response.status_code)
        assert "CSRF" in response.json()["detail"], (method, path)
    assert _row_counts() == before
