"""The API tokens page: make a token (shown once), see your tokens with when they were last used, revoke one."""

from datetime import datetime, time

from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from annotate import roles, selectors
from annotate.forms import ApiTokenForm
from annotate.models import ApiToken
from annotate.services import tokens as token_services

TOKENS = "annotate/api_tokens.html"


@never_cache
@require_http_methods(["GET", "POST"])
def token_list(request: HttpRequest) -> HttpResponse:
    form = ApiTokenForm(request.POST or None)
    if not roles.is_admin(request.user):
        form.fields["scope"].choices = [c for c in form.fields["scope"].choices if c[0] != "admin"]
    made = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        expires_at = None
        if data["expires_on"]:
            # The token works through the whole of its last day, in the server's time zone.
            expires_at = timezone.make_aware(datetime.combine(data["expires_on"], time.max))
        try:
            row, token = token_services.api_token_create(
                user=request.user, name=data["name"], scope=data["scope"], expires_at=expires_at
            )
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                form.add_error("expires_on" if field == "expires_at" else field, messages)
        else:
            # Shown in this one answer and never again: only its digest is stored.
            made = {"row": row, "token": token}
            form = ApiTokenForm()
    context = {
        "form": form,
        "made": made,
        "tokens": selectors.api_token_list_for_user(user=request.user),
        "now": timezone.now(),
    }
    return render(request, TOKENS, context, status=400 if form.errors else 200)


@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    try:
        token_services.api_token_revoke(user=request.user, token_id=token_id)
    except ApiToken.DoesNotExist:
        raise Http404("No such token of yours.") from None
    return redirect("annotate:token-list")
