import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_anonymous_users_are_redirected_to_login(client, project):
    response = client.get(reverse("annotate:project-detail", kwargs={"slug": project.slug}))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_health_needs_no_login(client):
    assert client.get(reverse("health")).json() == {"ok": True}


def test_a_member_sees_the_project(client, alice, project):
    client.force_login(alice)
    response = client.get(reverse("annotate:project-list"))
    assert project.name in response.content.decode()
    assert client.get(project.get_absolute_url()).status_code == 200


def test_a_non_member_cannot_see_or_open_the_project(client, mallory, project):
    client.force_login(mallory)
    assert project.name not in client.get(reverse("annotate:project-list")).content.decode()
    assert client.get(project.get_absolute_url()).status_code == 404


def test_an_admin_sees_every_project(client, admin_user, project, django_user_model):
    project.members.clear()
    client.force_login(admin_user)
    assert client.get(project.get_absolute_url()).status_code == 200


def test_a_project_needs_known_task_kinds(admin_user):
    from django.core.exceptions import ValidationError

    from annotate.services.projects import project_create

    with pytest.raises(ValidationError, match="Choose one or more of gold, preference, rubric"):
        project_create(name="x", slug="x", task_kinds=["ranking"])


def test_an_admin_can_create_a_project_and_add_members_in_the_admin_site(client, admin_user, alice):
    from annotate.models import Project

    client.force_login(admin_user)
    response = client.post(
        "/admin/annotate/project/add/",
        {
            "name": "Billing bot",
            "slug": "billing",
            "description": "",
            "guidelines": "",
            "task_kinds": '["gold"]',
            "overlap_k": 3,
            "eval_share": "0.250",
            "split_seed": 7,
            "lease_minutes": 30,
            "consensus_rule": "majority",
            "score_tolerance": 0.5,
            "rubric_signoffs_required": 2,
            "calibration_threshold": 0.667,
            "members": [alice.pk],
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    project = Project.objects.get(slug="billing")
    assert project.created_by == admin_user and list(project.members.all()) == [alice]


def test_a_reviewer_cannot_open_the_admin_site(client, alice):
    client.force_login(alice)
    assert client.get("/admin/annotate/project/").status_code == 302


def test_items_are_view_only_in_the_admin_site(client, admin_user, project):
    from annotate.models import Item

    item = Item.objects.create(project=project, kind="gold", prompt="p", content_hash="h1", split="train")
    client.force_login(admin_user)
    assert client.get(f"/admin/annotate/item/{item.pk}/change/").status_code == 200
    assert client.post(f"/admin/annotate/item/{item.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Item.objects.filter(pk=item.pk).exists()
