"""Smoke test of the benchmark harness: it imports, one scenario runs without servers at a
tiny size, and the report renders. Benchmarks are not tests: nothing here looks at a time.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `pytest` without `python -m`: make the repo importable
    sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.harness import Check, Impl, Target, alternate, ge, le  # noqa: E402
from benchmarks.scenarios import SCENARIOS  # noqa: E402


def test_every_scenario_module_imports_and_has_a_run_function() -> None:
    for name in SCENARIOS:
        module = importlib.import_module(f"benchmarks.scenarios.{name}")
        assert callable(module.run), name


async def test_alternate_gives_one_sample_per_round_for_each_implementation() -> None:
    calls: list[str] = []

    def impl(name: str) -> Impl:
        async def run() -> int:
            calls.append(name)
            return 10

        return Impl(run)

    samples = await alternate({"a": impl("a"), "b": impl("b")}, rounds=3, warmup=1)

    assert {name: len(xs) for name, xs in samples.items()} == {"a": 3, "b": 3}
    assert calls[:2] == ["a", "b"] and calls[2:4] == ["b", "a"]  # who goes first rotates


async def test_memory_scenario_runs_without_servers() -> None:
    from benchmarks.scenarios import memory

    strata = await memory.measure_strata(300)
    plain = memory.measure_dict(300)

    assert strata > 0 and plain > 0
    assert not math.isnan(strata)


def test_a_check_knows_its_ratio_and_whether_its_target_is_met() -> None:
    slow = Check("get", "ref", "µs/op", 3.0, {"floor": 2.0}, against="floor", target=le(1.25))
    fast = Check(
        "set_many", "ref", "rows/s", 80.0, {"COPY": 100.0}, against="COPY", target=ge(0.67)
    )
    lag = Check("lag p99", "ref", "ms", 4.0, target=Target("<=", 5.0, "absolute"))

    assert slow.ratio == 1.5 and slow.met is False
    assert fast.ratio == 0.8 and fast.met is True
    assert lag.ratio is None and lag.met is True
    assert Check.from_json(slow.to_json()) == slow


def test_report_renders_the_table_and_the_chart(tmp_path: Path) -> None:
    checks = [
        Check("get, L1 hit", "ref", "µs/op", 3.0, {"dict": 2.0}, against="dict", target=le(2.5)),
        Check("memory", "ref", "B/entry", 1500.0, {"dict": 1400.0}, against="dict"),
    ]
    data = {
        "meta": {"date": "2026-01-01 00:00 UTC", "nproc": 2, "cpu": "Test CPU", "durable": False},
        "scenarios": {"get_l1": {"ran_at": "2026-01-01 00:00", "seconds": 1.0, "checks": []}},
    }
    data["scenarios"]["get_l1"]["checks"] = [c.to_json() for c in checks]

    markdown = report.render_markdown(data)
    png = tmp_path / "ratios.png"
    report.render_chart(data, png)

    assert "| get, L1 hit | ref | 3.00 µs/op |" in markdown
    assert "**met**" in markdown
    assert "Test CPU" in markdown
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_scaling_parts_without_servers_run_in_quick_mode() -> None:
    from benchmarks.harness import Env
    from benchmarks.scenarios import scaling

    env = Env("postgresql://unused", "redis://unused", "bench_smoke", quick=True)
    checks = [*await scaling.l1_entries(env), *await scaling.model_width(env)]

    assert [c.variant for c in checks[:2]] == ["1,000 entries", "10,000 entries"]
    assert {c.variant for c in checks[2:]} == {"5 fields", "20 fields", "50 fields"}
    assert all(c.strata > 0 and c.scenario.startswith("scaling: ") for c in checks)


def test_scaling_rows_get_their_own_table_and_chart(tmp_path: Path) -> None:
    rows = [
        Check("scaling: L1 get", f"{n:,} entries", "µs/op", float(n.bit_length()))
        for n in (1_000, 100_000)
    ]
    data = {
        "meta": {"date": "2026-01-01 00:00 UTC", "nproc": 2, "cpu": "Test CPU"},
        "scenarios": {"scaling": {"checks": [c.to_json() for c in rows]}},
    }

    table = report.render_scaling_markdown(data)
    png = tmp_path / "scaling.png"
    report.render_scaling_chart(data, png)

    assert "| L1 get | 1,000 entries: **10.0 µs/op** · 100,000 entries: **17.0 µs/op** |" in table
    assert "scaling: L1 get" not in report.render_markdown(data).split("## Scaling")[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
