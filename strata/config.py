"""``Config``: every setting of a DataStore, all optional. URLs are parsed only here."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from strata.errors import ConfigError

if TYPE_CHECKING:
    from strata.observability import Observer

__all__ = [
    "DEFAULT_DATABASE_URL",
    "PGBOUNCER_HINT",
    "Config",
    "RedisTarget",
    "WriteMode",
    "hide_password",
    "parse_redis_url",
    "seconds",
]

DEFAULT_DATABASE_URL = "sqlite:///strata.db"

Seconds = float | int | timedelta


class WriteMode(Enum):
    WRITE_THROUGH = "write_through"
    WRITE_THROUGH_L1_ASYNC = "write_through_l1_async"
    WRITE_BEHIND = "write_behind"


def seconds(value: Seconds | None, what: str) -> float | None:
    """A TTL or interval as float seconds; ``None`` passes through (no expiry)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what} must be seconds (float) or a timedelta, got {value!r}")
    if value < 0:
        raise ConfigError(f"{what} must not be negative, got {value!r}")
    return float(value)


def hide_password(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        if "@" in parts.netloc and parts.scheme in ("redis+sentinel", "redis+cluster"):
            # ``redis+sentinel://secret@host...``: a lone token before "@" is the password.
            return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


#: Appended to the errors a pooler in transaction mode causes with named prepared statements.
PGBOUNCER_HINT = (
    "; behind pgbouncer (or another pooler) in transaction mode prepared statements cannot "
    "work: set Config(prepared_statements=False) (STRATA_PREPARED_STATEMENTS=0)"
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _flag(var: str, text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(f"{var} must be one of 1/0, true/false, yes/no, on/off; got {text!r}")


_REDIS_SCHEMES = "redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed ``redis_url``.

    ``kind`` is ``"standalone"`` (``url`` is handed to redis-py as is), ``"sentinel"``
    (``hosts`` are the sentinels, ``service`` the monitored master's name, ``db`` and
    ``password`` apply to the master and replicas) or ``"cluster"`` (``hosts`` are the
    startup nodes; the rest of the topology is discovered).
    """

    kind: str
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    password: str | None = None
    username: str | None = None

    @property
    def where(self) -> str:
        """``host:port[,host:port]`` (sentinel: ``.../service``) for messages, no password."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        if self.kind == "sentinel":
            return f"sentinel {hosts}/{self.service}"
        if self.kind == "cluster":
            return f"cluster {hosts}"
        return hosts


def _hosts(url: str, netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    hosts: list[tuple[str, int]] = []
    for part in netloc.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep:
            host, port = port, str(default_port)
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"redis_url has a bad host:port {part!r}: {hide_password(url)!r}")
        hosts.append((host, int(port)))
    return tuple(hosts)


def parse_redis_url(url: str) -> RedisTarget:
    """``redis_url`` as a ``RedisTarget``; ``ConfigError`` for anything else.

    ``redis+sentinel://[[user:]password@]host:port[,host:port]/service_name[/db]`` and
    ``redis+cluster://[[user:]password@]host:port[,host:port]`` (no database number: a
    cluster only has db 0).
    """
    if not isinstance(url, str):
        raise ConfigError(f"redis_url must be a string, got {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster"):
        raise ConfigError(f"redis_url must be {_REDIS_SCHEMES}, got {hide_password(url)!r}")
    if scheme in ("redis", "rediss", "unix"):
        return RedisTarget("standalone", url)
    netloc, _, path = rest.partition("/")
    path, _, _query = path.partition("?")
    username = password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        user, colon, secret = auth.partition(":")
        username, password = (user or None, secret) if colon else (None, user)
        password = unquote(password) if password else None
        username = unquote(username) if username else None
    hosts = _hosts(url, netloc, 26379 if scheme == "redis+sentinel" else 6379)
    segments = [s for s in path.split("/") if s]
    if scheme == "redis+cluster":
        if segments and segments != ["0"]:
            raise ConfigError(
                f"redis+cluster:// takes no database number (a cluster has db 0 only): "
                f"{hide_password(url)!r}"
            )
        return RedisTarget("cluster", url, hosts, password=password, username=username)
    if not segments or len(segments) > 2:
        raise ConfigError(
            "redis+sentinel:// needs the master's service name: "
            f"redis+sentinel://host:port[,host:port]/service_name[/db], got {hide_password(url)!r}"
        )
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ConfigError(f"redis_url database must be a number: {hide_password(url)!r}")
        db = int(segments[1])
    return RedisTarget(
        "sentinel", url, hosts, unquote(segments[0]), db, password=password, username=username
    )


@dataclass(frozen=True)
class Config:
    """DataStore settings. ``Config()`` alone runs embedded: L1 + SQLite file ``strata.db``."""

    database_url: str | None = None
    redis_url: str | None = None
    database_schema: str | None = None
    pool_min_size: int = 1
    pool_max_size: int = 10
    pool_timeout: float = 10.0
    redis_max_connections: int = 50
    redis_timeout: float = 0.5
    prepared_statements: bool = True
    default_l1_ttl: Seconds | None = 60.0
    default_l2_ttl: Seconds | None = 1800.0
    negative_ttl: Seconds = 2.0
    default_write_mode: WriteMode = WriteMode.WRITE_THROUGH
    write_behind_flush_interval: Seconds = 0.5
    write_behind_flush_threshold: int = 500
    write_behind_max_retry: int = 8
    write_behind_retry_base: Seconds = 0.2
    write_behind_retry_max: Seconds = 10.0
    write_behind_max_pending: int = 100_000
    #: With Redis: journal entries another instance left unacknowledged this long are
    #: claimed (it is presumed dead) and flushed here.
    write_behind_claim_after: Seconds = 30.0
    #: A writer waiting for room in a full journal (``write_behind_max_pending``) gives up
    #: after this long with WriteBehindError; ``close()`` flushes at most this long too.
    write_behind_wait_timeout: Seconds = 30.0
    invalidation_channel: str = "strata:invalidation"
    heartbeat_interval: Seconds = 2.0
    key_prefix: str = "strata"
    codec: str = "json"
    encryption_key: str | bytes | Mapping[str, str | bytes] | None = None
    encryption_key_id: str | None = None
    sweep_interval: Seconds = 5.0
    default_query_limit: int = 100
    #: Cached payloads (rows in L2, keyed-cache values) longer than this are zlib-compressed
    #: (None: never).
    compress_min_bytes: int | None = 4096
    #: A cached payload longer than this (after compression) is refused with
    #: ValueTooLargeError and nothing is written (None: no limit). For rows on an L2 schema
    #: the check encodes the row once more before the L3 write.
    max_value_bytes: int | None = None
    #: The keyed cache's memory tier: one LRU bound shared by every namespace (not by the
    #: schemas), and the longest a value stays in memory.
    cache_max_entries: int = 10_000
    cache_l1_ttl: Seconds | None = 60.0
    #: The keyed cache's single-flight lease (cross-instance) lives at most this long.
    cache_lease_ttl: Seconds = 10.0
    #: How often the DataStore purges expired rows of the durable ``_strata_cache`` table.
    cache_purge_interval: Seconds = 60.0
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    logger: logging.Logger | None = None
    observer: Observer | None = None
    # Errors Strata absorbs (logged, counted in Stats.errors, not raised): a failing hook
    # after a durable write, an L2 outage, a corrupt cached payload, ...
    on_error: Callable[[BaseException], None] | None = None
    # Fail at connect (TierUnavailableError) when Redis is unreachable, instead of running
    # degraded on L1 + L3; a ConfigError without redis_url.
    require_redis: bool = False

    def __post_init__(self) -> None:
        for name in (
            "default_l1_ttl",
            "default_l2_ttl",
            "negative_ttl",
            "write_behind_flush_interval",
            "write_behind_retry_base",
            "write_behind_retry_max",
            "write_behind_claim_after",
            "write_behind_wait_timeout",
            "heartbeat_interval",
            "sweep_interval",
            "cache_l1_ttl",
            "cache_lease_ttl",
            "cache_purge_interval",
        ):
            seconds(getattr(self, name), name)
        for name in (
            "pool_min_size",
            "pool_max_size",
            "write_behind_flush_threshold",
            "write_behind_max_pending",
            "redis_max_connections",
            "cache_max_entries",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.pool_min_size > self.pool_max_size:
            raise ConfigError("pool_min_size must not exceed pool_max_size")
        if self.write_behind_max_retry < 0:
            raise ConfigError("write_behind_max_retry must not be negative")
        if self.codec not in ("json", "msgpack"):
            raise ConfigError(f"codec must be 'json' or 'msgpack', got {self.codec!r}")
        if not isinstance(self.default_write_mode, WriteMode):
            raise ConfigError(
                f"default_write_mode must be a WriteMode, got {self.default_write_mode!r}"
            )
        for name in ("compress_min_bytes", "max_value_bytes"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        if not (seconds(self.cache_lease_ttl, "cache_lease_ttl") or 0.0) > 0:
            raise ConfigError("cache_lease_ttl must be positive")
        if not (seconds(self.cache_purge_interval, "cache_purge_interval") or 0.0) > 0:
            raise ConfigError("cache_purge_interval must be positive")
        if self.default_query_limit < 1:
            raise ConfigError("default_query_limit must be at least 1")
        if not self.key_prefix or ":" in self.key_prefix:
            raise ConfigError(f"key_prefix must be non-empty without ':', got {self.key_prefix!r}")
        self.dialect  # validates database_url  # noqa: B018
        if self.require_redis and self.redis_url is None:
            raise ConfigError("require_redis is set but redis_url is not (STRATA_REDIS_URL)")
        if not isinstance(self.prepared_statements, bool):
            raise ConfigError(
                f"prepared_statements must be True or False, got {self.prepared_statements!r}"
            )
        if self.redis_url is not None:
            parse_redis_url(self.redis_url)  # validates redis_url

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or DEFAULT_DATABASE_URL

    @property
    def dialect(self) -> str:
        """``"postgresql"`` or ``"sqlite"``, from the database URL's scheme."""
        url = self.resolved_database_url
        scheme = urlsplit(url).scheme.split("+", 1)[0]
        if scheme in ("postgresql", "postgres"):
            return "postgresql"
        if scheme == "sqlite":
            return "sqlite"
        raise ConfigError(
            f"database_url must be postgresql://... or sqlite:///path, got {hide_password(url)!r}"
        )

    @property
    def sqlite_path(self) -> str:
        """The file path of a ``sqlite:///path`` URL. ``sqlite:///:memory:`` becomes a
        shared in-memory database URI (``file:...``, open it with ``uri=True``) private to
        this Config, so the data tier and the migration engine see the same database."""
        url = self.resolved_database_url
        rest = url.split("://", 1)[1]
        path = rest[1:] if rest.startswith("/") else rest
        if path in ("", ":memory:"):
            return f"file:strata-{self.instance_id}?mode=memory&cache=shared"
        return path

    @property
    def asyncpg_dsn(self) -> str:
        url = self.resolved_database_url
        return "postgresql://" + url.split("://", 1)[1]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Settings from ``STRATA_*`` variables; keyword overrides win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        simple = {
            "STRATA_DATABASE_URL": "database_url",
            "STRATA_REDIS_URL": "redis_url",
            "STRATA_DATABASE_SCHEMA": "database_schema",
            "STRATA_ENCRYPTION_KEY": "encryption_key",
            "STRATA_ENCRYPTION_KEY_ID": "encryption_key_id",
            "STRATA_INVALIDATION_CHANNEL": "invalidation_channel",
            "STRATA_KEY_PREFIX": "key_prefix",
            "STRATA_CODEC": "codec",
        }
        for var, name in simple.items():
            if env.get(var):
                values[name] = env[var]
        numbers = {
            "STRATA_DEFAULT_L1_TTL": ("default_l1_ttl", float),
            "STRATA_DEFAULT_L2_TTL": ("default_l2_ttl", float),
            "STRATA_POOL_MIN_SIZE": ("pool_min_size", int),
            "STRATA_POOL_MAX_SIZE": ("pool_max_size", int),
            "STRATA_WRITE_BEHIND_FLUSH_INTERVAL": ("write_behind_flush_interval", float),
            "STRATA_WRITE_BEHIND_FLUSH_THRESHOLD": ("write_behind_flush_threshold", int),
            "STRATA_WRITE_BEHIND_MAX_RETRY": ("write_behind_max_retry", int),
            "STRATA_WRITE_BEHIND_MAX_PENDING": ("write_behind_max_pending", int),
            "STRATA_WRITE_BEHIND_CLAIM_AFTER": ("write_behind_claim_after", float),
            "STRATA_WRITE_BEHIND_WAIT_TIMEOUT": ("write_behind_wait_timeout", float),
            "STRATA_COMPRESS_MIN_BYTES": ("compress_min_bytes", int),
            "STRATA_MAX_VALUE_BYTES": ("max_value_bytes", int),
            "STRATA_CACHE_MAX_ENTRIES": ("cache_max_entries", int),
            "STRATA_CACHE_L1_TTL": ("cache_l1_ttl", float),
            "STRATA_CACHE_LEASE_TTL": ("cache_lease_ttl", float),
            "STRATA_CACHE_PURGE_INTERVAL": ("cache_purge_interval", float),
        }
        for var, (name, kind) in numbers.items():
            if env.get(var):
                try:
                    values[name] = kind(env[var])
                except ValueError as exc:
                    raise ConfigError(f"{var} must be a number, got {env[var]!r}") from exc
        if env.get("STRATA_PREPARED_STATEMENTS"):
            values["prepared_statements"] = _flag(
                "STRATA_PREPARED_STATEMENTS", env["STRATA_PREPARED_STATEMENTS"]
            )
        if env.get("STRATA_DEFAULT_WRITE_MODE"):
            try:
                values["default_write_mode"] = WriteMode(env["STRATA_DEFAULT_WRITE_MODE"].lower())
            except ValueError as exc:
                raise ConfigError(
                    f"STRATA_DEFAULT_WRITE_MODE must be one of "
                    f"{[m.value for m in WriteMode]}, got {env['STRATA_DEFAULT_WRITE_MODE']!r}"
                ) from exc
        if env.get("STRATA_REQUIRE_REDIS"):
            flag = env["STRATA_REQUIRE_REDIS"].strip().lower()
            if flag not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ConfigError(
                    f"STRATA_REQUIRE_REDIS must be true/false (1/0, yes/no, on/off), got {flag!r}"
                )
            values["require_redis"] = flag in ("1", "true", "yes", "on")
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes: Any) -> Config:
        return replace(self, **changes)
