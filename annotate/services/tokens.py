"""Personal API tokens: made, shown once, stored as a digest, revoked.

A token reads ``gs_<prefix>_<secret>``: the prefix (10 hex characters, stored as is) finds the row, the
secret (256 random bits) is never stored; the row keeps sha256 of the whole token. A leaked database
therefore holds nothing that authenticates, and sha256 suffices because the secret is random, not a
password that a slow hash would have to protect from guessing.
"""

import hashlib
import secrets
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from annotate import roles
from annotate.models import ApiToken

TOKEN_START = "gs_"
# last_used_at is written at most this often per token, so a busy script costs no write per request.
TOUCH_EVERY = timedelta(seconds=60)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_prefix(token: str) -> str | None:
    """The lookup prefix of a token in Goldset's shape, or None when it has another shape."""
    if not token.startswith(TOKEN_START):
        return None
    prefix, sep, secret = token[len(TOKEN_START) :].partition("_")
    if not sep or len(prefix) != 10 or not secret:
        return None
    return prefix


@transaction.atomic
def api_token_create(*, user, name: str, scope: str, expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """Make a token for the user; returns the row and the token itself, which is never shown again."""
    if scope == ApiToken.Scope.ADMIN and not roles.is_admin(user):
        raise ValidationError({"scope": "Only admins can make an admin token: choose read or write."})
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry is in the past: choose a later date, or none."})
    prefix = secrets.token_hex(5)
    token = f"{TOKEN_START}{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiToken(user=user, name=name.strip(), prefix=prefix, digest=token_digest(token), scope=scope)
    row.expires_at = expires_at
    row.full_clean(exclude=["user"])
    row.save()
    return row, token


def api_token_revoke(*, user, token_id: int) -> ApiToken:
    """Revoke one of the user's own tokens; it stops working at once. Revoking twice changes nothing."""
    token = ApiToken.objects.filter(pk=token_id, user=user).first()
    if token is None:
        raise ApiToken.DoesNotExist("No such token of yours.")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=token.revoked_at)
    return token


def api_token_mark_used(*, token: ApiToken, now: datetime | None = None) -> None:
    """Record that the token was just used (at most once a minute: one conditional UPDATE)."""
    now = now or timezone.now()
    if token.last_used_at is not None and now - token.last_used_at < TOUCH_EVERY:
        return
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    token.last_used_at = now
