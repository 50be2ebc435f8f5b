"""The admin action log page: who changed what, newest first (append-only at the database)."""

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from annotate import selectors
from annotate.models import AdminAction

PER_PAGE = 100


@require_GET
def admin_log(request: HttpRequest) -> HttpResponse:
    action = request.GET.get("action", "")
    if action not in AdminAction.Action.values:
        action = ""
    project = request.GET.get("project", "")[:100]
    entries = selectors.admin_action_list_for_admin(user=request.user, action=action, project_slug=project)
    page = Paginator(entries, PER_PAGE).get_page(request.GET.get("page"))
    context = {"page": page, "actions": AdminAction.Action.choices, "action": action, "project": project}
    return render(request, "annotate/admin_log.html", context)
