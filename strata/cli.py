"""The ``strata`` command: migrations, checks and cache warming for an application's store.

    strata migrate  --app MODULE:ATTR [--dry-run]       additive migration (or only its SQL)
    strata check    --app MODULE:ATTR [--json]          exit 1 when the database differs (CI)
    strata status   --app MODULE:ATTR                   the migration ledger as a table
    strata revision --app MODULE:ATTR -m MESSAGE        an Alembic revision file (additive)
    strata sql      --app MODULE:ATTR DIRECTORY         NNN_name.sql files (migrate_from)
    strata warm     --app MODULE:ATTR SCHEMA [--limit N]  rows from L3 into Redis (L2)
    strata rotate-key --app MODULE:ATTR [--batch N]     re-encrypt to the active key (resumable)
    strata dead-letters list|retry|drop --app MODULE:ATTR [--schema S] [--id ID ...] [--json]
                                                        write-behind writes the database refused

``MODULE:ATTR`` names a DataStore with its schemas registered, or a zero-argument function
(sync or async) returning one; ``STRATA_APP`` is the default. The module is imported from
the working directory. ``--database-url`` / ``--database-schema`` replace the store's
settings (the store is rebuilt from the same Schema objects).

Exit status: 0 done (``check``: the database matches), 1 failed (``check``: differences
found), 2 usage or configuration error (bad arguments, an ``--app`` that does not resolve
to a DataStore, a bad URL). Errors are one message on stderr, no traceback (``--traceback``
shows it); passwords in URLs are hidden.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import strata
from strata import migrations
from strata.config import Config, hide_password
from strata.datastore import DataStore
from strata.errors import (
    ConfigError,
    MigrationError,
    SchemaError,
    SchemaNotRegisteredError,
    StrataError,
    TierUnavailableError,
)
from strata.schema import CompiledSchema

__all__ = [
    "build_parser",
    "describe_error",
    "load_app",
    "load_datastore",
    "main",
    "rebuilt",
    "resolve_datastore",
    "with_settings",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@", re.IGNORECASE)


# -- finding the application's DataStore -----------------------------------------------------


def load_app(spec: str) -> object:
    """The object ``MODULE:ATTR`` names, imported with the working directory on sys.path.
    Raises ``ConfigError`` when the module or attribute does not exist."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--app must be MODULE:ATTR (e.g. examples.app:ds), got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ConfigError(
                f"--app {spec}: no module named {missing!r} (looked in {cwd} and on "
                "PYTHONPATH; run strata from the project root or set PYTHONPATH)"
            ) from None
        exc.add_note(f"while importing {module_name!r} for --app {spec}")
        raise
    except StrataError:
        raise
    except Exception as exc:
        exc.add_note(f"while importing {module_name!r} for --app {spec}")
        raise
    path = module_name
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"--app {spec}: {path!r} has no attribute {part!r}" + _available(obj)
            ) from None
        path = f"{path}.{part}"
    return obj


def _available(obj: object) -> str:
    names = [n for n, v in getattr(obj, "__dict__", {}).items() if isinstance(v, DataStore)]
    return f" (DataStores defined there: {', '.join(names)})" if names else ""


async def resolve_datastore(obj: object, spec: str) -> DataStore:
    """``obj`` itself when it is a DataStore, else what calling it returns (awaited)."""
    if isinstance(obj, DataStore):
        return obj
    what = f"the class {obj.__name__}" if isinstance(obj, type) else type(obj).__name__
    if not callable(obj) or isinstance(obj, type):
        raise ConfigError(f"--app {spec} is {what}, not a DataStore or a function returning one")
    try:
        inspect.signature(obj).bind()
    except TypeError as exc:
        raise ConfigError(f"--app {spec}: a factory must take no arguments ({exc})") from None
    except ValueError:  # no signature to inspect (some builtins): just call it
        pass
    result = obj()
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, DataStore):
        raise ConfigError(
            f"--app {spec}: calling it returned {type(result).__name__}, not a DataStore"
        )
    return result


def with_settings(
    store: DataStore, database_url: str | None = None, database_schema: str | None = None
) -> DataStore:
    """``store`` itself, or a new DataStore with the given settings and the same schemas."""
    changes = {
        k: v for k, v in (("database_url", database_url), ("database_schema", database_schema)) if v
    }
    if not changes:
        return store
    return rebuilt(store, store.config.with_(**changes))


def rebuilt(store: DataStore, config: Config | None = None) -> DataStore:
    """A new, unconnected DataStore with ``store``'s schemas (and config unless given)."""
    fresh = DataStore(config or store.config)
    for compiled in store.schemas.values():
        fresh.register(compiled.source)
    return fresh


def load_datastore(
    spec: str, *, database_url: str | None = None, database_schema: str | None = None
) -> DataStore:
    """The DataStore ``spec`` names, from synchronous code (the Alembic environment)."""
    obj = load_app(spec)
    store = asyncio.run(resolve_datastore(obj, spec)) if not isinstance(obj, DataStore) else obj
    return with_settings(store, database_url, database_schema)


async def _store(args: argparse.Namespace) -> DataStore:
    store = await resolve_datastore(load_app(args.app), args.app)
    return with_settings(store, args.database_url, args.database_schema)


def _l3(store: DataStore) -> list[CompiledSchema]:
    # the keyed cache's durable table is created (and compared) with the schemas' tables
    return [*(cs for cs in store.schemas.values() if cs.has_l3), store.cache.table]


def _where(cfg: Config) -> str:
    if cfg.dialect == "sqlite":
        return f"SQLite {cfg.sqlite_path}"
    schema = cfg.database_schema or "public"
    return f"{hide_password(cfg.resolved_database_url)} (schema {schema})"


# -- commands ----------------------------------------------------------------------------


async def cmd_migrate(args: argparse.Namespace) -> int:
    store = await _store(args)
    cfg = store.config
    report = await migrations.migrate(cfg, _l3(store), dry_run=args.dry_run)
    if args.dry_run:
        print(f"-- strata migrate --dry-run: {_where(cfg)}")
        if not report.applied:
            print("-- nothing to apply: the database already has every table, column and index")
        else:
            print(f"-- {len(report.applied)} change(s) planned, NOTHING was applied:")
            for change in report.applied:
                print(f"--   + {change.description}")
            print(report.sql, end="")
        _findings(report.drift, report.refused, prefix="-- ")
        return EXIT_OK
    if report.applied:
        where = f" (ledger #{report.record.id})" if report.record is not None else ""
        print(f"applied {len(report.applied)} change(s) to {_where(cfg)}{where}:")
        for change in report.applied:
            print(f"  + {change.description}")
    else:
        print(f"nothing to apply: {_where(cfg)} already has everything the models describe")
    _findings(report.drift, report.refused)
    return EXIT_OK


def _findings(
    drift: Sequence[migrations.Drift], refused: Sequence[migrations.Refusal], prefix: str = ""
) -> None:
    if drift:
        print(f"{prefix}drift: {len(drift)} difference(s) Strata never applies (a manual step):")
        for d in drift:
            print(f"{prefix}  ! {d}")
            if d.suggested_sql:
                sql = d.suggested_sql.replace("\n", f"\n{prefix}      ")
                print(f"{prefix}    suggested SQL (review first): {sql}")
    if refused:
        print(f"{prefix}refused: {len(refused)} change(s) the existing rows do not allow:")
        for r in refused:
            print(f"{prefix}  x {r}")


async def cmd_check(args: argparse.Namespace) -> int:
    store = await _store(args)
    cfg = store.config
    planned = await migrations.plan(cfg, _l3(store))
    found = len(planned.changes) + len(planned.drift) + len(planned.refused)
    if args.json:
        doc = {
            "ok": not found,
            "database": _where(cfg),
            "tables": len(_l3(store)),
            "pending": [c.description for c in planned.changes],
            "drift": [str(d) for d in planned.drift],
            "refused": [str(r) for r in planned.refused],
        }
        print(json.dumps(doc, indent=2))
        return EXIT_FAILURE if found else EXIT_OK
    if not found:
        tables = len(_l3(store))
        print(f"ok: {_where(cfg)} matches the models ({tables} table(s))")
        return EXIT_OK
    print(f"{found} difference(s) between the models and {_where(cfg)}:")
    for change in planned.changes:
        print(f"  pending  {change.description}")
    for d in planned.drift:
        print(f"  drift    {d}")
    for r in planned.refused:
        print(f"  refused  {r}")
    if planned.changes:
        print(f"`strata migrate --app {args.app}` applies the pending changes.")
    if planned.drift or planned.refused:
        print("Drift and refusals need a manual step (see each explanation).")
    return EXIT_FAILURE


async def cmd_status(args: argparse.Namespace) -> int:
    store = await _store(args)
    records = await migrations.migration_status(store.config)
    if not records:
        print(f"no migrations recorded in {_where(store.config)}")
        return EXIT_OK
    header = ("ID", "APPLIED AT (UTC)", "KIND", "CHECKSUM", "NAME")
    rows = [
        (
            str(r.id),
            r.applied_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            r.kind,
            r.checksum[:12],
            _shorten(r.name, 80),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    print(line(header))
    for record, row in zip(records, rows, strict=True):
        print(line(row))
        if args.statements:
            for sql in record.statements.strip().splitlines():
                print(f"    {sql}")
    return EXIT_OK


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


async def cmd_sql(args: argparse.Namespace) -> int:
    store = await _store(args)
    cfg = store.config
    known = {r.id for r in await migrations.migration_status(cfg)}
    try:
        applied = await migrations.migrate_from(cfg, args.directory)
    except MigrationError:
        # the files before the failing one stay applied: list them before the error
        _applied_files([r for r in await migrations.migration_status(cfg) if r.id not in known])
        raise
    if not applied:
        print(f"nothing to apply: every NNN_*.sql file in {args.directory} is already applied")
    _applied_files(applied, cfg)
    return EXIT_OK


def _applied_files(
    records: Sequence[migrations.MigrationRecord], cfg: Config | None = None
) -> None:
    if records:
        where = f" to {_where(cfg)}" if cfg is not None else " before the failure"
        print(f"applied {len(records)} file(s){where}:")
    for record in records:
        print(f"  + {record.name}  (ledger #{record.id}, sha256 {record.checksum[:12]})")


async def cmd_warm(args: argparse.Namespace) -> int:
    store = await _store(args)
    if args.schema not in store.schemas:
        raise SchemaNotRegisteredError(
            f"schema {args.schema!r} is not registered by --app {args.app} "
            f"(registered: {', '.join(store.schemas) or 'none'})"
        )
    if args.limit < 0:
        raise ConfigError("--limit must be 0 (every row) or positive")
    compiled = store.schemas[args.schema]
    if not _has_l2(store, compiled):
        # L1 is this command's own memory: whatever it loaded there would vanish on exit.
        why = "no redis_url is configured" if store.config.redis_url is None else "its l2=None"
        raise ConfigError(
            f"nothing to warm: {args.schema} has no shared cache tier ({why}); warm fills "
            "Redis (L2), which every instance reads. Each process's L1 fills on its own reads "
            "(or call ds.warm_cache() in that process)"
        )
    tiers = [t for t, on in (("L1", compiled.has_l1), ("L2", True)) if on]
    # a copy: the application's own store object is left as it was (unconnected or open)
    async with rebuilt(store) as store:
        total = await store.count(args.schema)
        target = min(total, args.limit) if args.limit else total
        progress = _Progress(sys.stderr, f"warming {args.schema}", target)
        loaded = await store.warm_cache(
            args.schema, limit=args.limit, progress=lambda n: progress.update(min(target, n))
        )
        progress.finish(loaded)
    into = " and ".join(tiers) if tiers else "no cache tier (the schema has none configured)"
    print(f"warmed {loaded} row(s) of {args.schema} into {into}")
    return EXIT_OK


async def cmd_rotate_key(args: argparse.Namespace) -> int:
    from strata.rotate import rotate_key

    if args.batch < 1:
        raise ConfigError("--batch must be at least 1")

    def progress(schema: str, done: int, total: int) -> None:
        print(f"rotating {schema}: {done}/{total} rows scanned", file=sys.stderr, flush=True)

    async with rebuilt(await _store(args)) as store:
        report = await rotate_key(store, batch=args.batch, progress=progress)
    for name, n in report.rotated.items():
        print(
            f"{name}: {n} row(s) re-encrypted to key {report.active_key_id!r}, "
            f"{report.current[name]} already on it"
        )
    if not report.rotated:
        print("no schema has encrypted fields: nothing to rotate")
    return EXIT_OK


async def cmd_dead_letters(args: argparse.Namespace) -> int:
    """List, retry or drop write-behind dead letters (kept in Redis: every instance's)."""
    async with rebuilt(await _store(args)) as store:
        schema, ids = args.schema, args.id or None
        if schema is not None and schema not in store.schemas:
            raise SchemaNotRegisteredError(
                f"schema {schema!r} is not registered by --app {args.app} "
                f"(registered: {', '.join(store.schemas) or 'none'})"
            )
        if args.action == "retry":
            n = await store.retry_dead_letters(schema, ids)
            print(f"retried {n} dead letter(s)")
            return EXIT_OK
        if args.action == "drop":
            n = await store.drop_dead_letters(schema, ids)
            print(f"dropped {n} dead letter(s)")
            return EXIT_OK
        letters = await store.dead_letters(schema, ids)
    rows = [
        {
            "schema": d.write.schema,
            "id": str(d.write.id),
            "op": d.write.op,
            "version": d.write.version,
            "error": f"{type(d.error).__name__}: {d.error}",
            "failed_at": datetime.fromtimestamp(d.failed_at, UTC).isoformat(timespec="seconds"),
        }
        for d in letters
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no dead letters")
    else:
        for r in rows:
            error = _shorten(str(r["error"]).replace("\n", " "), 120)
            print(f"{r['schema']}\t{r['id']}\t{r['op']}\t{r['failed_at']}\t{error}")
    return EXIT_OK


def _has_l2(store: DataStore, compiled: CompiledSchema) -> bool:
    return compiled.has_l2 and store.config.redis_url is not None


class _Progress:
    """A dependency-free progress bar on a terminal; one final line elsewhere."""

    def __init__(self, stream: TextIO, label: str, total: int) -> None:
        self.stream, self.label, self.total = stream, label, total
        self.tty = stream.isatty()
        self.started = time.monotonic()

    def line(self, done: int) -> str:
        share = done / self.total if self.total else 1.0
        bar = "#" * int(share * 30)
        elapsed = time.monotonic() - self.started
        return f"{self.label} [{bar:<30}] {done}/{self.total} rows {share:4.0%} {elapsed:.1f}s"

    def update(self, done: int) -> None:
        if self.tty:
            self.stream.write("\r" + self.line(done))
            self.stream.flush()

    def finish(self, done: int) -> None:
        self.stream.write(("\r" if self.tty else "") + self.line(done) + "\n")
        self.stream.flush()


def cmd_revision(args: argparse.Namespace) -> int:
    """Synchronous: the Alembic environment runs its own event loop."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    store = asyncio.run(_store(args))
    ini = Path("alembic.ini")
    cfg = AlembicConfig(
        str(ini) if ini.is_file() else None, cmd_opts=argparse.Namespace(quiet=True, x=None)
    )
    directory = args.directory or (None if ini.is_file() else "migrations")
    if directory is not None:
        cfg.set_main_option("script_location", str(Path(directory).absolute()))
    location = Path(cfg.get_main_option("script_location") or "migrations")
    if not (location / "env.py").is_file():
        raise ConfigError(
            f"no Alembic environment in {location} (env.py missing): copy this project's "
            "migrations/ directory there, or pass --directory"
        )
    cfg.attributes["strata_datastore"] = store
    result = command.revision(cfg, message=args.message, autogenerate=True)
    rewritten = cfg.attributes.get("strata_rewritten")
    scripts = [s for s in (result if isinstance(result, list) else [result]) if s is not None]
    if not scripts:
        print(
            f"nothing to add: {_where(store.config)} has everything the models describe; "
            "no revision written"
        )
    for script in scripts:
        print(f"wrote {script.path}")
    if rewritten is not None:
        for step in rewritten.steps:
            for change in step.changes:
                print(f"  + {change.description}")
        if rewritten.drift or rewritten.refused:
            print("left out of the revision (Strata's additive rule):")
            _findings(rewritten.drift, rewritten.refused, prefix="  ")
    return EXIT_OK


# -- parsing and dispatch ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strata",
        description="Strata: migrations, checks and cache warming for a Strata DataStore.",
        epilog="Exit status: 0 ok, 1 failure (check: differences found), 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"strata {strata.__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    app = argparse.ArgumentParser(add_help=False)
    app.add_argument(
        "--app",
        default=os.environ.get("STRATA_APP"),
        metavar="MODULE:ATTR",
        help="the DataStore (or a function returning one), e.g. examples.app:ds "
        "(default: $STRATA_APP)",
    )
    app.add_argument("--database-url", metavar="URL", help="use this database instead")
    app.add_argument("--database-schema", metavar="NAME", help="use this PostgreSQL schema")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, run: Callable[..., Any], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[app], help=help, description=help)
        p.set_defaults(run=run)
        return p

    p = command("migrate", cmd_migrate, "apply additive changes (tables, columns, indexes)")
    p.add_argument("--dry-run", action="store_true", help="print the SQL, change nothing")
    p = command("check", cmd_check, "exit 1 listing each difference between models and database")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p = command("status", cmd_status, "show the migration ledger")
    p.add_argument("--statements", action="store_true", help="also print each run's SQL")
    p = command("revision", cmd_revision, "write an Alembic revision file (additive ops)")
    p.add_argument("-m", "--message", required=True, help="the revision's message")
    p.add_argument(
        "--directory",
        metavar="DIR",
        help="the Alembic environment (default: script_location of ./alembic.ini, "
        "else ./migrations)",
    )
    p = command("sql", cmd_sql, "apply NNN_name.sql files in order (migrate_from)")
    p.add_argument("directory", metavar="FILE_DIR", help="directory of NNN_name.sql files")
    p = command("warm", cmd_warm, "load rows from the database into the caches")
    p.add_argument("schema", metavar="SCHEMA", help="the schema name to warm")
    p.add_argument("--limit", type=int, default=0, help="at most N rows (default 0: all)")
    p = command("rotate-key", cmd_rotate_key, "re-encrypt encrypted columns to the active key")
    p.add_argument("--batch", type=int, default=500, help="rows per transaction (default 500)")
    p = command("dead-letters", cmd_dead_letters, "list, retry or drop write-behind dead letters")
    p.add_argument("action", choices=("list", "retry", "drop"), help="what to do with them")
    p.add_argument("--schema", metavar="SCHEMA", help="only this schema's")
    p.add_argument("--id", action="append", metavar="ID", help="only this id (repeatable)")
    p.add_argument("--json", action="store_true", help="list: print them as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    if not args.app:
        print(
            f"strata {args.command}: error: --app MODULE:ATTR is required "
            "(or set STRATA_APP), e.g. --app examples.app:ds",
            file=sys.stderr,
        )
        return EXIT_USAGE
    run: Callable[[argparse.Namespace], int | Awaitable[int]] = args.run
    try:
        result = run(args)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        return int(result)
    except KeyboardInterrupt:
        print("strata: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.traceback:
            traceback.print_exc()
        code, message = describe_error(exc)
        print(f"strata {args.command}: error: {message}", file=sys.stderr)
        return code


async def _awaited(result: Awaitable[int]) -> int:
    return await result


def describe_error(exc: BaseException) -> tuple[int, str]:
    """An exit status and a one-line (or few-line) message for an error, password hidden."""
    from alembic.util import CommandError

    if isinstance(exc, CommandError) and isinstance(exc.__cause__, StrataError):
        exc = exc.__cause__  # raised in migrations/env.py, unwrapped for its type
    code = EXIT_FAILURE
    if isinstance(exc, ConfigError | SchemaNotRegisteredError):
        code, label = EXIT_USAGE, "configuration"
    elif isinstance(exc, TierUnavailableError):
        label = "database unreachable"
    elif isinstance(exc, MigrationError):
        label = "migration"
    elif isinstance(exc, SchemaError):
        label = "schema"
    elif isinstance(exc, StrataError | CommandError):
        label = type(exc).__name__
    else:
        label = f"{type(exc).__name__}{_location(exc)}"
    text = str(exc).strip() or type(exc).__name__
    notes = getattr(exc, "__notes__", ())
    if notes:
        text += "".join(f"\n  ({note})" for note in notes)
    return code, f"{label}: " + _URL_PASSWORD.sub(r"\1***@", text)


def _location(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" at {Path(last.filename).name}:{last.lineno}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
