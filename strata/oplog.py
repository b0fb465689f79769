"""The operator's log lines: one INFO line each on connect, migrate and close; drift as a
WARNING. Alembic's own INFO chatter is kept out of ``ds.migrate()``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from strata.config import hide_password
from strata.observability import default_logger

if TYPE_CHECKING:
    from strata.datastore import DataStore
    from strata.migrations import MigrationReport
    from strata.tiers.base import L2Tier

__all__ = ["log_close", "log_connect", "log_migrate", "quiet_alembic"]


def _l3(ds: DataStore) -> str:
    cfg = ds.config
    if cfg.dialect == "sqlite":
        return f"sqlite {cfg.sqlite_path}"
    where = hide_password(cfg.resolved_database_url)
    return f"postgresql {where}" + (f" schema={cfg.database_schema}" if cfg.database_schema else "")


def log_connect(ds: DataStore, l2: L2Tier | None, bus_on: bool) -> None:
    cfg = ds.config
    where = "redis " + hide_password(cfg.redis_url) if cfg.redis_url else "none"
    if l2 is not None and cfg.redis_url is None:
        where = type(l2).__name__
    if l2 is not None and not l2.available:
        where += " (unreachable: degraded to L1 + L3)"
    modes = ", ".join(f"{name}={cs.write_mode.value}" for name, cs in ds.schemas.items())
    log(ds).info(
        "strata connected: L1 memory, L2 %s, L3 %s; bus %s; schemas: %s",
        where,
        _l3(ds),
        "on" if bus_on else "off",
        modes or "none",
    )


def log_close(ds: DataStore) -> None:
    s = ds.stats()
    log(ds).info(
        "strata closed: %d gets, %d sets, %d deletes, %d errors, %d write-behind pending",
        s.gets,
        s.sets,
        s.deletes,
        s.errors,
        s.dirty_count,
    )


def log(ds: DataStore) -> logging.Logger:
    return ds.config.logger or default_logger()


def log_migrate(log: logging.Logger, report: MigrationReport) -> None:
    verb = "would apply" if report.dry_run else "applied"
    if report.applied:
        log.info(
            "strata migrate: %s %d changes: %s",
            verb,
            len(report.applied),
            "; ".join(str(c) for c in report.applied),
        )
    else:
        log.info("strata migrate: database up to date, nothing to apply")
    if report.drift:
        log.warning(
            "strata migrate: %d drifts left alone (apply them by hand): %s",
            len(report.drift),
            "; ".join(str(d) for d in report.drift),
        )
    if report.refused:
        log.warning(
            "strata migrate: %d changes refused: %s",
            len(report.refused),
            "; ".join(str(r) for r in report.refused),
        )


def quiet_alembic() -> None:
    """Alembic logs INFO lines on every run ("Context impl ...", "Detected added table ...");
    they duplicate our one line. Raise its logger to WARNING unless the application set a
    level for it itself."""
    alembic = logging.getLogger("alembic")
    if alembic.level == logging.NOTSET:
        alembic.setLevel(logging.WARNING)
