"""manage.py seed_demo: demo users, the "Support assistant" project, its items and rubric. Safe to rerun."""

import io

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from annotate import demo, roles
from annotate.models import Annotation, ImportBatch, Project, Rubric
from annotate.services.imports import import_batch_create, import_batch_run, sample_bytes
from annotate.services.projects import project_add_members, project_create, roles_ensure, user_grant_role
from annotate.services.rubrics import rubric_create, rubric_signoff, rubric_version_create, rubric_version_propose

DEMO_SLUG = "support-assistant"
# Demo logins, printed by the command: never use these outside a local demo.
DEMO_USERS = [
    ("admin", roles.ADMIN, "admin-demo"),
    ("reviewer1", roles.REVIEWER, "reviewer1-demo"),
    ("reviewer2", roles.REVIEWER, "reviewer2-demo"),
    ("reviewer3", roles.REVIEWER, "reviewer3-demo"),
    ("adjudicator", roles.ADJUDICATOR, "adjudicator-demo"),
]


class Command(BaseCommand):
    help = "Create the demo users, the Support assistant project (through the real import) and its rubric."

    def handle(self, *args, **options):
        users = self.ensure_users()
        project = self.ensure_project(users)
        self.ensure_items(project)
        self.ensure_rubric(project, users)
        self.ensure_reviews(project, users)
        self.ensure_base_model()
        counts = {s: project.items.filter(split=s).count() for s in ("train", "eval")}
        self.stdout.write(
            f"Demo project '{project.name}' (/projects/{project.slug}/): "
            f"{counts['train'] + counts['eval']} items, {counts['train']} train / {counts['eval']} eval."
        )
        self.stdout.write("Demo logins (local demo only):")
        for username, role, password in DEMO_USERS:
            self.stdout.write(f"  {username:<12} {password:<18} {role}")

    @transaction.atomic
    def ensure_users(self) -> dict:
        roles_ensure()
        User = get_user_model()
        users = {}
        for username, role, password in DEMO_USERS:
            user, _ = User.objects.get_or_create(username=username)
            user.set_password(password)
            # The demo admin also runs Django's admin site.
            user.is_staff = user.is_superuser = role == roles.ADMIN
            user.save()
            user_grant_role(user=user, role=role)
            users[username] = user
        return users

    @transaction.atomic
    def ensure_project(self, users: dict) -> Project:
        project = Project.objects.filter(slug=DEMO_SLUG).first()
        if project is None:
            project = project_create(
                name="Support assistant",
                slug=DEMO_SLUG,
                task_kinds=["gold", "preference", "rubric"],
                created_by=users["admin"],
                description="Support answers for Northwind Goods: refunds, orders, shipping, accounts, billing.",
                guidelines=demo.GUIDELINES,
                split_seed=demo.DEMO_SEED,
            )
        project_add_members(project=project, users=list(users.values()))
        return project

    def ensure_items(self, project: Project) -> None:
        if project.imports.filter(status=ImportBatch.Status.SUCCEEDED, filename="support-demo.jsonl").exists():
            return
        batch = import_batch_create(
            project=project,
            uploaded_by=None,
            filename="support-demo.jsonl",
            upload=io.BytesIO(sample_bytes(demo.demo_rows())),
        )
        batch = import_batch_run(batch_id=batch.id)
        self.stdout.write(batch.message)

    def ensure_reviews(self, project: Project, users: dict) -> None:
        if Annotation.objects.filter(item__project=project).exists():
            return
        reviewed = demo.demo_reviews(project=project, reviewers=[users["reviewer1"], users["reviewer2"]])
        self.stdout.write(
            f"reviewer1 and reviewer2 have reviewed {reviewed} training items (letting some flaws slip, as teams do); "
            "the eval items and the rubric items wait in the queue."
        )

    def ensure_base_model(self) -> None:
        from training.demo import demo_base_model_build

        path, built = demo_base_model_build()
        if path is None:
            self.stdout.write("No demo base model: install the training extra to train in the demo.")
        elif built:
            self.stdout.write(f"Demo base model (random weights, for trying the flow only) built in {path}.")

    @transaction.atomic
    def ensure_rubric(self, project: Project, users: dict) -> None:
        """The demo's rubric becomes active the way any rubric does: proposed, then signed off by reviewers."""
        rubric = Rubric.objects.filter(project=project, name="Support quality").first()
        if rubric is None:
            rubric = rubric_create(project=project, name="Support quality")
        if rubric.versions.exists():
            return
        version = rubric_version_create(
            rubric=rubric,
            criteria=demo.DEMO_RUBRIC,
            created_by=users["admin"],
            notes="Demo rubric: helpfulness 1-5, correctness per policy, tone.",
        )
        version = rubric_version_propose(version=version)
        for name in ("reviewer1", "reviewer2")[: project.rubric_signoffs_required]:
            rubric_signoff(version=version, reviewer=users[name])
