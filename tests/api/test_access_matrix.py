"""Every API endpoint against every role and membership, and against every token scope.

The endpoints are read from the API's own routes, so an endpoint added without a rule here fails
``test_every_endpoint_has_a_rule``. Each rule says which scope the endpoint needs and who may use it, in
the words of the pages' selectors:

- ``user``: anyone signed in;
- ``member``: members of the project, and admins;
- ``report``: members who adjudicate, and admins (the agreement report names reviewers);
- ``admin``: admins only (a member reviewer gets 403, a non-member 404: no existence leak);
- ``maker``: admins only, on no project (POST /projects);
- ``admins``: admins only, on no project (eval set lists, training): everyone else gets 403.

Anyone else gets 401 (no credential), 403 or 404, as a problem document; allowed callers get a 2xx.
"""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotate.models import ImportBatch, Lease, Rubric, RubricVersion
from annotate.services import imports as import_services
from annotate.services import queue
from config.api import scope_of
from config.apiurls import api
from tests import factories
from tests.api import training_world

pytestmark = pytest.mark.django_db

JSONL = b'{"prompt": "Where is my order?", "response": "In transit."}\n'

# (method, path) -> (scope, who, request): request gives the body (JSON unless content_type says otherwise)
# and the query string of a call that succeeds for an allowed caller.
RULES = {
    ("GET", "/me"): ("read", "user", {}),
    ("GET", "/projects"): ("read", "user", {}),
    ("POST", "/projects"): ("admin", "maker", {"body": {"name": "New", "slug": "new-one", "task_kinds": ["gold"]}}),
    ("GET", "/projects/{slug}"): ("read", "member", {}),
    ("PATCH", "/projects/{slug}"): ("admin", "admin", {"body": {"guidelines": "Cite the policy."}}),
    ("GET", "/projects/{slug}/members"): ("read", "admin", {}),
    ("PUT", "/projects/{slug}/members/{username}"): ("admin", "admin", {"body": {"role": "reviewer"}}),
    ("DELETE", "/projects/{slug}/members/{username}"): ("admin", "admin", {}),
    ("GET", "/projects/{slug}/items"): ("read", "member", {}),
    ("POST", "/projects/{slug}/imports"): ("admin", "admin", {"multipart": True}),
    ("POST", "/projects/{slug}/imports/rows"): (
        "admin",
        "admin",
        {"raw": JSONL, "content_type": "application/x-ndjson"},
    ),
    ("GET", "/projects/{slug}/imports"): ("read", "admin", {}),
    ("GET", "/projects/{slug}/imports/{batch_id}"): ("read", "admin", {}),
    ("GET", "/projects/{slug}/imports/{batch_id}/errors"): ("read", "admin", {}),
    ("POST", "/projects/{slug}/queue/next"): ("write", "member", {}),
    ("POST", "/projects/{slug}/queue/leases/{lease_id}/submit"): (
        "write",
        "member",
        {"body": {"action": "write", "answer": "A careful answer."}},
    ),
    ("POST", "/projects/{slug}/queue/leases/{lease_id}/skip"): ("write", "member", {}),
    ("GET", "/projects/{slug}/annotations/export"): ("read", "admin", {}),
    ("GET", "/projects/{slug}/report"): ("read", "report", {}),
    ("POST", "/projects/{slug}/report"): ("write", "report", {}),
    ("GET", "/projects/{slug}/rubrics"): ("read", "member", {}),
    ("GET", "/projects/{slug}/rubrics/versions/{version_id}"): ("read", "member", {}),
    # Eval sets: versions are found as their pages find them (404 outside the project), then admins only.
    ("GET", "/evalsets/versions"): ("read", "admins", {}),
    ("GET", "/evalsets/versions/{evalset_version_id}"): ("read", "admin", {}),
    ("GET", "/evalsets/versions/{evalset_version_id}/export/{layout}"): ("read", "admin", {}),
    ("GET", "/evalsets/versions/{evalset_version_id}/export/{layout}/manifest"): ("read", "admin", {}),
    # Training: admins only, as its pages.
    ("GET", "/training/snapshots"): ("read", "admins", {}),
    ("POST", "/training/snapshots"): (
        "admin",
        "admins",
        {"body": {"name": "gold only", "projects": ["support"], "kinds": ["gold"]}},
    ),
    ("GET", "/training/snapshots/{snapshot_id}"): ("read", "admins", {}),
    ("POST", "/training/snapshots/{snapshot_id}/audits"): ("admin", "admins", {}),
    ("POST", "/training/snapshots/{snapshot_id}/contamination-checks"): ("admin", "admins", {}),
    ("GET", "/training/contamination-checks/{run_id}"): ("read", "admins", {}),
    ("GET", "/training/audits/{audit_id}"): ("read", "admins", {}),
    ("POST", "/training/audits/{audit_id}/acknowledgements"): (
        "admin",
        "admins",
        {"body": {"finding": "dup-answer", "reason": "Canned answers are the policy."}},
    ),
    ("POST", "/training/preflights"): (
        "admin",
        "admins",
        {"body": lambda w: {"snapshot_id": w["snapshot"].pk, "base_model": "/models/tiny", "config": {"max_steps": 3}}},
    ),
    ("GET", "/training/preflights/{preflight_id}"): ("read", "admins", {}),
    ("POST", "/training/preflights/{preflight_id}/job"): ("admin", "admins", {}),
    ("GET", "/training/jobs"): ("read", "admins", {}),
    ("GET", "/training/jobs/{job_id}"): ("read", "admins", {}),
    ("GET", "/training/jobs/{job_id}/metrics"): ("read", "admins", {}),
    ("POST", "/training/jobs/{job_id}/cancel"): ("admin", "admins", {}),
    ("POST", "/training/jobs/{job_id}/retry"): ("admin", "admins", {}),
    ("POST", "/training/jobs/{job_id}/resume"): ("admin", "admins", {}),
    ("GET", "/training/jobs/{job_id}/artifacts"): ("read", "admins", {}),
    ("GET", "/training/jobs/{job_id}/artifacts/{path}"): ("read", "admins", {}),
}

ROLES = ["anonymous", "outsider", "reviewer", "adjudicator", "admin"]
ALLOWED = {
    "user": {"outsider", "reviewer", "adjudicator", "admin"},
    "member": {"reviewer", "adjudicator", "admin"},
    "report": {"adjudicator", "admin"},
    "admin": {"admin"},
    "maker": {"admin"},
    "admins": {"admin"},
}


def api_operations() -> dict[tuple[str, str], object]:
    """Every (method, path) the API serves, with its operation, from the routers themselves."""
    found = {}
    for prefix, router in api._routers:
        for path, path_view in router.path_operations.items():
            for operation in path_view.operations:
                for method in operation.methods:
                    # {path:path} is a converter, not a name: the rules spell the parameter plainly.
                    found[(method, (prefix + path).replace("//", "/").replace("{path:path}", "{path}"))] = operation
    return found


def test_every_endpoint_has_a_rule():
    served = set(api_operations())
    assert served - set(RULES) == set(), "an endpoint without an access rule: add it to RULES"
    assert set(RULES) - served == set(), "a rule for an endpoint that no longer exists"


def test_each_endpoint_asks_for_the_scope_its_rule_names():
    for key, operation in api_operations().items():
        assert scope_of(operation.auth_callbacks) == RULES[key][0], key


@pytest.fixture
def world(request, project, alice, bob, carol, judge, admin_user, mallory, settings, tmp_path):
    """The project with items for everyone's queue, a lease per user, an import and a rubric version."""
    settings.MEDIA_ROOT = tmp_path / "media"
    project.task_kinds = ["gold"]
    project.overlap_k = 5
    project.save()
    for _ in range(4):
        factories.make_item(project, "gold")
    leases = {}
    for role, user in {"reviewer": alice, "adjudicator": judge, "admin": admin_user}.items():
        leases[role] = queue.lease_next_for_reviewer(project=project, reviewer=user)
    leases["outsider"] = leases["anonymous"] = leases["reviewer"]
    batch = import_services.import_batch_create(
        project=project,
        uploaded_by=admin_user,
        filename="seed.jsonl",
        upload=SimpleUploadedFile("seed.jsonl", b'{"prompt": ""}\n'),
    )
    import_services.import_batch_run(batch_id=batch.pk)
    rubric = Rubric.objects.create(project=project, name="Quality")
    version = RubricVersion.objects.create(rubric=rubric, number=1, criteria=factories.CRITERIA)
    users = {"outsider": mallory, "reviewer": alice, "adjudicator": judge, "admin": admin_user, "anonymous": None}
    world = {"project": project, "leases": leases, "batch": batch, "version": version, "users": users}
    key = getattr(getattr(request.node, "callspec", None), "params", {}).get("key")
    if key is not None and key[1].startswith(("/evalsets", "/training")):
        # Built only for the endpoints that need it: the eval set, snapshots, audits, preflights and jobs.
        settings.ARTIFACTS_DIR = tmp_path / "artifacts"
        training_world.build(world, project=project, admin=admin_user, reviewers=[alice, bob])
    return world


def fill(path: str, world, role: str, method: str) -> str:
    training = {}
    if "snapshot" in world:
        job = world["jobs"]["queued" if path.endswith("/cancel") else "failed"]
        training = {
            "evalset_version_id": world["version"].pk,
            "layout": "prompt-completion",
            "snapshot_id": world["snapshot"].pk,
            "run_id": world["run"].pk,
            "audit_id": world["audit"].pk,
            "preflight_id": world["preflight"].pk,
            "job_id": job.pk,
            "path": "tokenizer/tokenizer.json",
        }
    return path.format(
        slug=world["project"].slug,
        lease_id=world["leases"][role].pk,
        batch_id=world["batch"].pk,
        version_id=world["version"].pk,
        username="carol" if method == "DELETE" else "bob",
        **training,
    )


def call(client, method: str, path: str, request: dict, token: str | None, world=None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    url = "/api/v1" + path
    if request.get("multipart"):
        upload = SimpleUploadedFile("rows.jsonl", JSONL, content_type="application/x-ndjson")
        return client.post(url, {"file": upload, "mode": "all_or_nothing", "provenance": "distilled"}, **headers)
    if "raw" in request:
        return client.generic(method, url, request["raw"], content_type=request["content_type"], **headers)
    body = request.get("body")
    if callable(body):
        body = body(world)
    if body is None:
        return client.generic(method, url, **headers)
    return client.generic(method, url, json.dumps(body), content_type="application/json", **headers)


def assert_problem(response, statuses):
    assert response.status_code in statuses, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == response.status_code and problem["detail"] and problem["title"]


@pytest.mark.parametrize("credential", ["token", "session"])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("key", sorted(RULES), ids=lambda k: f"{k[0]} {k[1]}")
def test_who_may_call_each_endpoint(client, api_as, world, key, role, credential):
    """By token (the widest scope the user may hold) and by signed-in session (every scope)."""
    method, template = key
    scope, who, request = RULES[key]
    user = world["users"][role]
    token = None
    if user is not None and credential == "token":
        token = api_as(user, "admin" if role == "admin" else "write").token
    elif user is not None:
        client.force_login(user)
    response = call(client, method, fill(template, world, role, method), request, token, world)
    if role == "anonymous":
        assert_problem(response, {401})
        assert response["WWW-Authenticate"].startswith("Bearer")
    elif role in ALLOWED[who]:
        assert 200 <= response.status_code < 300, (role, response.status_code, response.content[:400])
    elif credential == "token" and scope == "admin":
        assert_problem(response, {403})  # only admins hold admin tokens
        assert "needs admin" in response.json()["detail"]
    elif role == "outsider" and who not in ("maker", "admins"):
        assert_problem(response, {404})  # a project one is not in does not exist, as on the pages
    else:
        assert_problem(response, {403})


LOWER = {"write": "read", "admin": "write"}


@pytest.mark.parametrize("key", sorted(RULES), ids=lambda k: f"{k[0]} {k[1]}")
def test_a_token_below_the_endpoints_scope_is_refused_and_one_at_it_works(client, api_as, world, key):
    method, template = key
    scope, who, request = RULES[key]
    role = "admin" if who in ("admin", "maker", "admins") else "adjudicator" if who == "report" else "reviewer"
    user = world["users"][role]
    path = fill(template, world, role, method)
    if scope in LOWER:
        # Only admins may hold admin tokens; a reviewer's write token stands for "below admin" there.
        weak = api_as(user, LOWER[scope]).token
        response = call(client, method, path, request, weak, world)
        assert_problem(response, {403})
        assert f"needs {scope}" in response.json()["detail"]
        Lease.objects.filter(pk=world["leases"][role].pk).update(status=Lease.Status.ACTIVE)
    response = call(client, method, path, request, api_as(user, scope).token, world)
    assert 200 <= response.status_code < 300, (response.status_code, response.content[:400])


def test_an_outsider_sees_no_project_in_the_list(api_as, world, mallory):
    page = api_as(mallory, "read")("GET", "/projects").json()
    assert page == {"items": [], "next_cursor": None}


def test_nothing_was_imported_by_a_refused_import(client, api_as, world, alice):
    before = ImportBatch.objects.count()
    response = call(
        client,
        "POST",
        "/projects/support/imports/rows",
        RULES[("POST", "/projects/{slug}/imports/rows")][2],
        api_as(alice).token,
    )
    assert response.status_code == 403 and ImportBatch.objects.count() == before
