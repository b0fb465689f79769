"""``Config``: every setting of a DataStore, all optional. URLs are parsed only here."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from strata.errors import ConfigError

if TYPE_CHECKING:
    from strata.observability import Observer

__all__ = ["DEFAULT_DATABASE_URL", "Config", "WriteMode", "hide_password", "seconds"]

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
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


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
    write_behind_claim_after: Seconds = 30.0
    write_behind_wait_timeout: Seconds = 30.0
    invalidation_channel: str = "strata:invalidation"
    heartbeat_interval: Seconds = 2.0
    key_prefix: str = "strata"
    codec: str = "json"
    encryption_key: str | bytes | Mapping[str, str | bytes] | None = None
    encryption_key_id: str | None = None
    sweep_interval: Seconds = 5.0
    default_query_limit: int = 100
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    logger: logging.Logger | None = None
    observer: Observer | None = None

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
        ):
            seconds(getattr(self, name), name)
        for name in (
            "pool_min_size",
            "pool_max_size",
            "write_behind_flush_threshold",
            "write_behind_max_pending",
            "redis_max_connections",
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
        if self.default_query_limit < 1:
            raise ConfigError("default_query_limit must be at least 1")
        if not self.key_prefix or ":" in self.key_prefix:
            raise ConfigError(f"key_prefix must be non-empty without ':', got {self.key_prefix!r}")
        self.dialect  # validates database_url  # noqa: B018
        if self.redis_url is not None and urlsplit(self.redis_url).scheme not in (
            "redis",
            "rediss",
            "unix",
        ):
            raise ConfigError(
                f"redis_url must be redis://, rediss:// or unix://, got {self.redis_url!r}"
            )

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
        }
        for var, (name, kind) in numbers.items():
            if env.get(var):
                try:
                    values[name] = kind(env[var])
                except ValueError as exc:
                    raise ConfigError(f"{var} must be a number, got {env[var]!r}") from exc
        if env.get("STRATA_DEFAULT_WRITE_MODE"):
            try:
                values["default_write_mode"] = WriteMode(env["STRATA_DEFAULT_WRITE_MODE"].lower())
            except ValueError as exc:
                raise ConfigError(
                    f"STRATA_DEFAULT_WRITE_MODE must be one of "
                    f"{[m.value for m in WriteMode]}, got {env['STRATA_DEFAULT_WRITE_MODE']!r}"
                ) from exc
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes: Any) -> Config:
        return replace(self, **changes)
