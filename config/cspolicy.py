"""django-csp's middleware, with the policy header built once rather than for every response.

Goldset sets one policy in settings, and no view sets its own parts or asks for a nonce, so the header
is the same on every response; django-csp rebuilds it from the settings each time, which cost about as
much CPU as a queue request's session read. A request or response that does carry its own parts (a
nonce, django-csp's per-view decorators) goes through django-csp unchanged.
"""

from functools import cache

from csp.constants import HEADER, HEADER_REPORT_ONLY
from csp.middleware import CheckableLazyObject
from csp.middleware import CSPMiddleware as _CSPMiddleware
from csp.utils import build_policy
from django.conf import settings
from django.core.signals import setting_changed

# Attributes django-csp's decorators set on a response to change its policy.
_PER_RESPONSE = ("_csp_config", "_csp_update", "_csp_replace", "_csp_config_ro", "_csp_update_ro", "_csp_replace_ro")


@cache
def _policies() -> tuple[tuple[str, str, tuple], tuple[str, str, tuple]]:
    """(header, policy, excluded URL prefixes) for the enforced policy and the report-only one."""
    out = []
    for header, name, report_only in (
        (HEADER, "CONTENT_SECURITY_POLICY", False),
        (HEADER_REPORT_ONLY, "CONTENT_SECURITY_POLICY_REPORT_ONLY", True),
    ):
        config = getattr(settings, name, None) or {}
        out.append((header, build_policy(report_only=report_only), tuple(config.get("EXCLUDE_URL_PREFIXES") or ())))
    return tuple(out)


def _policy_settings_changed(*, setting, **kwargs) -> None:
    if setting.startswith("CONTENT_SECURITY_POLICY"):
        _policies.cache_clear()


setting_changed.connect(_policy_settings_changed)


class CSPMiddleware(_CSPMiddleware):
    def process_response(self, request, response):
        if getattr(request, "_csp_nonce", None) is not None or any(
            getattr(response, name, None) is not None for name in _PER_RESPONSE
        ):
            return super().process_response(request, response)
        if response.status_code in (404, 500) and settings.DEBUG:
            return response
        for (header, policy, excluded), exempt in zip(_policies(), ("_csp_exempt", "_csp_exempt_ro"), strict=True):
            if (
                policy
                and header not in response
                and not getattr(response, exempt, False)
                and not request.path_info.startswith(excluded)
            ):
                response[header] = policy
        # As django-csp does: a nonce asked for after the header is written is an error, not a silent gap.
        request.csp_nonce = CheckableLazyObject(self._csp_nonce_post_response)
        return response
