"""The API with every app's router mounted, and its URL patterns (``config/urls.py`` includes them).

Kept apart from ``config/api.py``, which the apps' routers import for auth, errors and paging: mounting
imports every app's router, and a module ``training`` imports must never lead to ``evalsets``.
"""

from annotate.api import router as annotate_router
from config.api import _mark, api
from evalsets.api import router as evalsets_router
from training.api import router as training_router

api.add_router("", annotate_router)
api.add_router("", evalsets_router)
api.add_router("", training_router)

__all__ = ["api", "api_urls"]


def api_urls():
    patterns, app_name, namespace = api.urls
    return _mark(patterns), app_name, namespace
