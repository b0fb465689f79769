"""``python -m benchmarks``: run the scenarios, one process each, and write the report.

python -m benchmarks [--quick] [--scenario NAME ...] [--scaling] [--durable] [--out DIR] [--list]

The default run includes the ``scaling`` scenario (its table: ``results/scaling.md``);
``--scaling`` runs it alone, ``--no-scaling`` leaves it out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.harness import asyncpg_dsn, database_url, redis_url
from benchmarks.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller sizes")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        metavar="NAME",
        help="run only this scenario (repeatable); the report keeps the others' last results",
    )
    parser.add_argument("--scaling", action="store_true", help="run only the scaling tables")
    parser.add_argument("--no-scaling", action="store_true", help="leave the scaling tables out")
    parser.add_argument("--durable", action="store_true", help="keep synchronous_commit on")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results directory")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per scenario")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, what in SCENARIOS.items():
            print(f"{name:<20} {what}")
        return 0

    problem = asyncio.run(_servers_answer())
    if problem and (ROOT / "scripts" / "ensure-services").exists():
        print(f"benchmarks: {problem}; trying scripts/ensure-services", file=sys.stderr)
        subprocess.run([str(ROOT / "scripts" / "ensure-services")], cwd=ROOT, check=False)
        problem = asyncio.run(_servers_answer())
    if problem:
        print(
            f"benchmarks: {problem}. Set STRATA_BENCH_DATABASE_URL / STRATA_BENCH_REDIS_URL "
            "or start the servers (scripts/ensure-services).",
            file=sys.stderr,
        )
        return 2

    names = args.scenario or (["scaling"] if args.scaling else list(SCENARIOS))
    if args.no_scaling:
        names = [n for n in names if n != "scaling"]
    json_path = args.out / "latest.json"
    data = report.load(json_path)
    data["meta"] = asyncio.run(_machine(args.durable))
    failed = 0
    for name in names:
        entry = _run_one(name, quick=args.quick, durable=args.durable, timeout=args.timeout)
        failed += bool(entry.get("error"))
        data["scenarios"][name] = entry
        report.save(json_path, data)  # a crash later on keeps what was measured
    markdown = report.render_markdown(data)
    (args.out / "latest.md").write_text(markdown, encoding="utf-8")
    report.render_chart(data, args.out / "ratios.png")
    (args.out / "scaling.md").write_text(report.render_scaling_markdown(data), encoding="utf-8")
    report.render_scaling_chart(data, args.out / "scaling.png")
    print(markdown)
    print(f"wrote {args.out}/latest.md, ratios.png, scaling.md, scaling.png", file=sys.stderr)
    return 1 if failed else 0


def _run_one(name: str, *, quick: bool, durable: bool, timeout: float) -> dict[str, Any]:
    load = _loadavg()
    started = time.monotonic()
    ran_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    print(f"benchmarks: {name} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.json"
        cmd = [sys.executable, "-m", f"benchmarks.scenarios.{name}", "--json", str(out)]
        cmd += ["--quick"] * quick + ["--durable"] * durable
        error = None
        checks: list[Any] = []
        try:
            proc = subprocess.run(cmd, cwd=ROOT, timeout=timeout, check=False)
            if proc.returncode != 0:
                error = f"exited with status {proc.returncode} (traceback above)"
            else:
                import json

                checks = json.loads(out.read_text(encoding="utf-8"))
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f} s"
    seconds = time.monotonic() - started
    print(f"benchmarks: {name} done in {seconds:.0f} s", file=sys.stderr, flush=True)
    return {
        "ran_at": ran_at,
        "quick": quick,
        "durable": durable,
        "seconds": seconds,
        "load": load,
        "checks": checks,
        "error": error,
    }


async def _servers_answer() -> str | None:
    import asyncpg
    import redis.asyncio as aioredis

    try:
        conn = await asyncpg.connect(asyncpg_dsn(database_url()), timeout=5)
        await conn.close()
    except Exception as exc:
        return f"PostgreSQL does not answer ({type(exc).__name__}: {exc})"
    client = aioredis.Redis.from_url(redis_url(), socket_connect_timeout=5)
    try:
        await client.ping()
    except Exception as exc:
        return f"Redis does not answer ({type(exc).__name__}: {exc})"
    finally:
        await client.aclose()
    return None


async def _machine(durable: bool) -> dict[str, Any]:
    import asyncpg
    import redis.asyncio as aioredis

    conn = await asyncpg.connect(asyncpg_dsn(database_url()))
    try:
        postgres = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    client = aioredis.Redis.from_url(redis_url())
    try:
        redis_version = (await client.info("server")).get("redis_version", "?")
    finally:
        await client.aclose()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "postgres": str(postgres).split()[0],
        "redis": redis_version,
        "commit": _commit(),
        "durable": durable,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "strata"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return (rev or "?") + ("+dirty" if dirty else "")


def _loadavg() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "?"
    return f"{one:.2f} / {five:.2f}"


if __name__ == "__main__":
    sys.exit(main())
