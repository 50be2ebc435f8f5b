"""Goldset settings, all chosen from the environment.

No variables set: the embedded default (SQLite and artifacts under ``var/``, Celery on a
filesystem broker), which needs nothing outside the repo. ``DATABASE_URL`` and ``REDIS_URL``
switch to PostgreSQL and Redis.
"""

import os
import secrets
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("GOLDSET_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean: use 1/0, true/false, yes/no or on/off.")


DATABASE_URL = os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")
EMBEDDED = not DATABASE_URL

DEBUG = env_bool("GOLDSET_DEBUG", False)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not EMBEDDED:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Outside the embedded demo define SECRET_KEY in the environment "
            "(for example: python -c 'import secrets; print(secrets.token_urlsafe(50))')."
        )
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
    SECRET_KEY = key_file.read_text().strip()

ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "axes",
    "csp",
    # Only for its vendored Swagger UI (templates and static files): the docs work offline, no CDN.
    "ninja",
    "annotate",
    "evalsets",
    "training",
    "evalsets.judging",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.cspolicy.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every page needs a login unless a view opts out with @login_not_required.
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "annotate.context_processors.roles",
                "evalsets.context_processors.evalsets",
            ],
        },
    },
]

# --- Databases -------------------------------------------------------------------------------
# Three PostgreSQL roles (config/dbroles.py): the owner owns the schema and runs migrations
# ("owner" alias: `manage.py migrate --database owner`); the app role ("default", DATABASE_URL) has
# DML only and owns nothing; the gpu worker's trainer role ("training") has no privilege on any
# evalsets table. `manage.py ensure_db_roles` creates and grants all three.
OWNER_ROLE = os.environ.get("GOLDSET_OWNER_ROLE", "goldset_owner")
OWNER_PASSWORD = os.environ.get("GOLDSET_OWNER_PASSWORD", "goldset_owner")
TRAINER_ROLE = os.environ.get("GOLDSET_TRAINER_ROLE", "goldset_trainer")
TRAINER_PASSWORD = os.environ.get("GOLDSET_TRAINER_PASSWORD", "goldset_trainer")


def _role_url(app_url: str, role: str, password: str) -> str:
    """The app's URL with another login (same host, port, database and options)."""
    parts = urlsplit(app_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(role)}:{quote(password)}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


if EMBEDDED:
    _sqlite = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": VAR_DIR / "goldset.sqlite3",
        # BEGIN IMMEDIATE takes the write lock up front: the queue's assignment cannot race
        # on SQLite, which has no SELECT ... FOR UPDATE SKIP LOCKED.
        # WAL with synchronous=NORMAL: no fsync per commit (the WAL is synced at checkpoints); a crash of
        # the app loses nothing, a power cut may lose the last commits but never corrupts the file.
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        # Keep each thread's connection between requests: opening one (file, PRAGMAs, Django's SQL
        # functions) cost more CPU than a whole queue request.
        "CONN_MAX_AGE": int(os.environ.get("CONN_MAX_AGE", "60")),
    }
    DATABASES = {
        # The test database is a file too: an in-memory one uses SQLite's shared cache, whose table
        # locks fail at once ("database table is locked") instead of waiting like file locks do.
        "default": {**_sqlite, "TEST": {"NAME": str(VAR_DIR / "test_goldset.sqlite3")}},
        "training": {**_sqlite, "TEST": {"MIRROR": "default"}},
    }
else:
    # Parameters bound by the server, and statements run five times on a connection prepared there:
    # the queue's few hot statements are then planned once per connection instead of on every run,
    # and planning the pick costs more than running it. Behind a pooler in transaction mode
    # (pgbouncer) prepared statements do not survive between transactions: set GOLDSET_PG_PREPARE=0 there.
    _PG_OPTIONS = {"server_side_binding": True}
    if os.environ.get("GOLDSET_PG_PREPARE", "1") != "0":
        _PG_OPTIONS["prepare_threshold"] = 5
    DATABASES = {
        "default": dj_database_url.parse(DATABASE_URL, conn_max_age=int(os.environ.get("CONN_MAX_AGE", "60"))),
        "training": {
            **dj_database_url.parse(
                os.environ.get("TRAINER_DATABASE_URL") or _role_url(DATABASE_URL, TRAINER_ROLE, TRAINER_PASSWORD)
            ),
            # In tests the trainer connects to the same test database, as the trainer role.
            "TEST": {"MIRROR": "default"},
        },
        # Only migrations, ensure_db_roles and the test suite's set-up and flush connect as the owner.
        "owner": {
            **dj_database_url.parse(
                os.environ.get("OWNER_DATABASE_URL") or _role_url(DATABASE_URL, OWNER_ROLE, OWNER_PASSWORD)
            ),
            "TEST": {"MIRROR": "default"},
        },
    }
    # A URL given for a role names it; the role settings then follow the URL.
    APP_ROLE = DATABASES["default"]["USER"]
    TRAINER_ROLE = DATABASES["training"]["USER"]
    OWNER_ROLE = DATABASES["owner"]["USER"]
    for _db in DATABASES.values():  # after any options the URL carries (?sslmode=...)
        _db["OPTIONS"] = {**_db.get("OPTIONS", {}), **_PG_OPTIONS}
        # A kept connection the server dropped meanwhile (a restart, a terminated backend) is replaced at the
        # start of the next request instead of failing it.
        _db["CONN_HEALTH_CHECKS"] = True
    if os.environ.get("GOLDSET_DB_NAME"):
        for alias in DATABASES:
            DATABASES[alias]["NAME"] = os.environ["GOLDSET_DB_NAME"]

DATABASE_ROUTERS = ["config.routers.EvalWallRouter"]
# The gpu worker runs with GOLDSET_DB_ALIAS=training: training models go through the trainer role
# and evalsets models are refused (config/routers.py).
GOLDSET_DB_ALIAS = os.environ.get("GOLDSET_DB_ALIAS", "default")
if GOLDSET_DB_ALIAS not in DATABASES:
    raise ImproperlyConfigured(f"GOLDSET_DB_ALIAS={GOLDSET_DB_ALIAS!r}: use one of {', '.join(DATABASES)}.")
# Contamination check defaults (evalsets/contamination.py): n-gram size, and the share of a text
# covered by n-grams shared with one eval text that blocks a snapshot.
CONTAMINATION_NGRAM = int(os.environ.get("GOLDSET_CONTAMINATION_NGRAM", "13"))
CONTAMINATION_THRESHOLD = float(os.environ.get("GOLDSET_CONTAMINATION_THRESHOLD", "0.5"))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
# Django's database sessions and model backend, with the per-request reads written out (config.rawsql).
# django-axes first: it refuses a login while its username and address are locked out.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "config.auth.ModelBackend"]
SESSION_ENGINE = "config.sessions"
LOGIN_REDIRECT_URL = "annotate:project-list"
LOGOUT_REDIRECT_URL = "login"

# --- Login throttling (django-axes) ------------------------------------------------------------
# After this many failed logins for one username from one address, that pair is locked out for the
# cool-off time; a successful login resets the count. Keyed on the pair, so nobody can lock a user out
# from elsewhere. Behind a proxy, pass the client address through (AXES_IPWARE_PROXY_COUNT).
AXES_FAILURE_LIMIT = int(os.environ.get("GOLDSET_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=float(os.environ.get("GOLDSET_LOGIN_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False

# --- Content-Security-Policy (django-csp) ------------------------------------------------------
# Scripts and styles only from the app's own static files: no inline <script>, event handler or
# style attribute runs (static/js/goldset.js sets the few computed styles through the CSSOM).
from csp.constants import NONE, SELF  # noqa: E402

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# --- HTTPS (production) -------------------------------------------------------------------------
# GOLDSET_HTTPS=1 where the site is served over HTTPS (docker-compose behind a TLS proxy): secure
# cookies, HSTS, redirect to https. Left off for the embedded demo and plain-http test servers.
GOLDSET_HTTPS = env_bool("GOLDSET_HTTPS", False)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if GOLDSET_HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("GOLDSET_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # the container's health probe speaks plain http
    SECURE_HSTS_SECONDS = int(os.environ.get("GOLDSET_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("GOLDSET_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("GOLDSET_HSTS_PRELOAD", True)
# Behind a TLS proxy that sets X-Forwarded-Proto (and strips it from clients): trust it.
if env_bool("GOLDSET_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns about a missing one
# Serve straight from the finders too, so the demo needs no collectstatic.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

MEDIA_ROOT = VAR_DIR / "media"
ARTIFACTS_DIR = Path(os.environ.get("GOLDSET_ARTIFACTS_DIR", VAR_DIR / "artifacts"))
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
# Uploads above this go to a temp file on disk instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
# The largest upload (an import file) accepted; a bigger one is refused while it arrives, before it fills the disk.
GOLDSET_UPLOAD_MAX_BYTES = int(os.environ.get("GOLDSET_UPLOAD_MAX_BYTES", str(2 * 1024**3)))
FILE_UPLOAD_HANDLERS = [
    "config.uploads.SizeLimitUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
# Item imports up to this size run during the upload request; bigger ones go to the Celery worker.
GOLDSET_IMPORT_INLINE_MAX_BYTES = int(os.environ.get("GOLDSET_IMPORT_INLINE_MAX_BYTES", str(1024 * 1024)))

# --- Celery ----------------------------------------------------------------------------------
# Agreement reports over more annotations than this are computed by a worker, with a progress bar.
GOLDSET_REPORT_INLINE_MAX = int(os.environ.get("GOLDSET_REPORT_INLINE_MAX", "20000"))
# Snapshots of more records than this are audited by a worker, with a progress bar.
GOLDSET_AUDIT_INLINE_MAX = int(os.environ.get("GOLDSET_AUDIT_INLINE_MAX", "5000"))
# From this many records a worker runs the audit's text detectors in a second process, on another core.
GOLDSET_AUDIT_PROCESS_MIN = int(os.environ.get("GOLDSET_AUDIT_PROCESS_MIN", "50000"))

CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    # The stale-heartbeat check must not wait behind a training run on the gpu queue.
    "training.tasks.training_jobs_fail_stale": {"queue": "default"},
    # Needs the training extra and the base models but no GPU: its own workers, so it never waits behind a run.
    "training.tasks.training_preflight_run": {"queue": "preflight"},
    # Audits read the annotations behind a snapshot: the web side's worker and role, not the gpu queue.
    "training.tasks.snapshot_audit_run_task": {"queue": "default"},
    "training.tasks.*": {"queue": "gpu"},
    # Generation runs load a model: the gpu queue, as the trainer role, prompts from a file of their own.
    "evalsets.judging.tasks.generation_run_task": {"queue": "gpu"},
    "evalsets.judging.tasks.generation_runs_fail_stale": {"queue": "default"},
}
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    # Longer than the longest training run, or Redis redelivers an unacked message mid-run.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 7 * 24 * 3600}
else:
    _queue_dir = VAR_DIR / "celery"
    for sub in ("queue", "control"):
        (_queue_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir / "queue"),
        "data_folder_out": str(_queue_dir / "queue"),
        "control_folder": str(_queue_dir / "control"),
    }

# --- Training jobs -----------------------------------------------------------------------------
TRAINING_HEARTBEAT_S = float(os.environ.get("GOLDSET_TRAINING_HEARTBEAT_S", "30"))
# A running job with no heartbeat for this long is failed by the periodic check (run Celery beat).
TRAINING_STALE_AFTER_S = float(os.environ.get("GOLDSET_TRAINING_STALE_AFTER_S", "300"))
# A running job whose step has not advanced for max(this, 10x its median step) is failed as stalled.
TRAINING_STALL_FLOOR_S = float(os.environ.get("GOLDSET_TRAINING_STALL_FLOOR_S", "300"))
TRAINING_HEARTBEAT_THREAD = env_bool("GOLDSET_TRAINING_HEARTBEAT_THREAD", True)
TRAINING_CANCEL_POLL_S = float(os.environ.get("GOLDSET_TRAINING_CANCEL_POLL_S", "1"))
# GPUs per job ("auto": all the worker sees); above 1 the job trains through `accelerate launch` (DDP).
TRAINING_GPUS = os.environ.get("GOLDSET_TRAINING_GPUS", "auto")
# "auto": accelerate launch only for several GPUs; "accelerate": always; "inprocess": never.
TRAINING_LAUNCHER = os.environ.get("GOLDSET_TRAINING_LAUNCHER", "auto")
CELERY_BEAT_SCHEDULE = {
    "background-sweep": {"task": "annotate.tasks.background_sweep", "schedule": 60.0},
    "export-lines-refresh": {"task": "annotate.tasks.export_lines_refresh", "schedule": 60.0},
    "training-fail-stale-jobs": {"task": "training.tasks.training_jobs_fail_stale", "schedule": 60.0},
    "judging-fail-stale-runs": {"task": "evalsets.judging.tasks.generation_runs_fail_stale", "schedule": 60.0},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("GOLDSET_LOG_LEVEL", "WARNING")},
}
