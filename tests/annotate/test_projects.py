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
