"""The report: ``results/latest.json`` (every scenario's checks, merged by scenario) rendered
as ``results/latest.md`` (one table) and ``results/ratios.png`` (ratios against targets).

Nothing here measures anything; it can be run on stored results alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.harness import Check
from benchmarks.scenarios import SCENARIOS

RESULTS = Path(__file__).parent / "results"


# -- the stored results -------------------------------------------------------------------


def load(path: Path) -> dict[str, Any]:
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data
    return {"meta": {}, "scenarios": {}}


def save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def checks_of(data: dict[str, Any]) -> list[tuple[str, Check]]:
    """(scenario module, check) in report order."""
    out = []
    scenarios = data.get("scenarios", {})
    for name in [*SCENARIOS, *sorted(set(scenarios) - set(SCENARIOS))]:
        entry = scenarios.get(name)
        if entry:
            out += [(name, Check.from_json(c)) for c in entry.get("checks", [])]
    return out


# -- numbers ------------------------------------------------------------------------------


def fmt_value(value: float, unit: str) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if unit in ("rows/s", "ops/s", "B/entry"):
        return f"{value:,.0f} {unit}"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None or math.isnan(ratio):
        return "—"
    return f"{ratio:.2f}×" if ratio < 10 else f"{ratio:.1f}×"  # noqa: RUF001


def _result(check: Check) -> str:
    met = check.met
    if check.target is None:
        return "—"
    if met is None:
        return "n/a"
    return "**met**" if met else "**missed**"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


# -- markdown -----------------------------------------------------------------------------


def render_markdown(data: dict[str, Any]) -> str:
    meta = data.get("meta", {})
    scenarios = data.get("scenarios", {})
    lines = ["# Strata benchmarks", ""]
    lines.append(
        f"Run {meta.get('date', '?')} · Python {meta.get('python', '?')} · "
        f"{meta.get('nproc', '?')} CPUs (nproc) · {meta.get('cpu', '?')} · "
        f"PostgreSQL {meta.get('postgres', '?')} · Redis {meta.get('redis', '?')} · "
        f"Strata {meta.get('commit', '?')}"
    )
    lines.append("")
    lines.append(
        "Each scenario runs in its own process; Strata and its baselines alternate in rounds "
        "(the first of a round rotates) and each number is the median over rounds. Ratios are "
        "Strata ÷ the named baseline of the same run: for times lower is better, for rates "
        "higher is better. ± is Strata's interquartile range over rounds, relative to its "
        "median (how noisy the number is)."
    )
    if meta.get("durable") is False:
        lines.append("")
        lines.append(
            "PostgreSQL sessions (Strata's and the baselines') use `synchronous_commit=off`: "
            "a commit's WAL flush costs the same for everyone and would hide the client-side "
            "cost the ratios are about. `python -m benchmarks --durable` keeps it on."
        )
    lines += [
        "",
        "| scenario | variant | Strata | baselines (same run) | ratio | target | result | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, c in checks_of(data):
        if is_scaling(c):
            continue  # their own table below
        strata = fmt_value(c.strata, c.unit)
        if c.spread is not None:
            strata += f" ±{c.spread * 100:.0f}%"
        bases = []
        for name, value in c.baselines.items():
            text = f"{name}: {fmt_value(value, c.unit)}"
            bases.append(f"**{text}**" if name == c.against else text)
        ratio = fmt_ratio(c.ratio)
        if c.ratio is not None and c.against:
            ratio += f" vs {c.against}"
        target = c.target.label if c.target else "—"
        row = [
            c.scenario,
            c.variant,
            strata,
            "<br>".join(bases) or "—",
            ratio,
            target,
            _result(c),
            c.note,
        ]
        lines.append("| " + " | ".join(_cell(x) for x in row) + " |")
    scaling = scaling_table(data)
    if scaling:
        lines += ["", "## Scaling", "", *scaling]
    failed = [(n, e) for n, e in scenarios.items() if e.get("error")]
    if failed:
        lines += ["", "## Scenarios that did not finish", ""]
        lines += [f"- `{n}`: {e['error']}" for n, e in failed]
    lines += ["", "## Runs", "", "| scenario | ran at (UTC) | mode | seconds | load avg at start |"]
    lines.append("|---|---|---|---|---|")
    for name in [*SCENARIOS, *sorted(set(scenarios) - set(SCENARIOS))]:
        e = scenarios.get(name)
        if not e:
            continue
        mode = "quick" if e.get("quick") else "full"
        if e.get("durable"):
            mode += ", durable"
        lines.append(
            f"| `{name}` | {e.get('ran_at', '?')} | {mode} | {e.get('seconds', 0):.0f} | "
            f"{e.get('load', '?')} |"
        )
    met = [c.met for _, c in checks_of(data) if c.met is not None]
    lines += ["", f"Targets met: {sum(met)} of {len(met)}.", ""]
    return "\n".join(lines)


# -- scaling: cost per op as the work grows -------------------------------------------------

SCALING_PREFIX = "scaling: "


def is_scaling(check: Check) -> bool:
    return check.scenario.startswith(SCALING_PREFIX)


def _scaling_series(data: dict[str, Any]) -> dict[str, list[Check]]:
    """What grows (``scaling: L1 get``) -> its checks in size order."""
    series: dict[str, list[Check]] = {}
    for _, c in checks_of(data):
        if is_scaling(c):
            series.setdefault(c.scenario.removeprefix(SCALING_PREFIX), []).append(c)
    return series


def scaling_table(data: dict[str, Any]) -> list[str]:
    """Markdown lines: one row per operation, one cell per size (empty without results)."""
    series = _scaling_series(data)
    if not series:
        return []
    lines = ["| operation | sizes → cost per op | notes |", "|---|---|---|"]
    for what, checks in series.items():
        cells = " · ".join(f"{c.variant}: **{fmt_value(c.strata, c.unit)}**" for c in checks)
        notes = "; ".join(sorted({c.note for c in checks if c.note}))
        lines.append("| " + " | ".join(_cell(x) for x in (what, cells, notes)) + " |")
    return lines


def render_scaling_markdown(data: dict[str, Any]) -> str:
    meta = data.get("meta", {})
    head = [
        "# Strata scaling",
        "",
        f"Run {meta.get('date', '?')} · {meta.get('nproc', '?')} CPUs (nproc) · "
        f"{meta.get('cpu', '?')} · Strata {meta.get('commit', '?')} "
        "(`python -m benchmarks --scenario scaling`; medians over rounds)",
        "",
    ]
    return "\n".join([*head, *(scaling_table(data) or ["no scaling results yet"]), ""])


def render_scaling_chart(data: dict[str, Any], path: Path) -> None:
    """One small panel per operation: cost per op against size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _scaling_series(data)
    if not series:
        return
    cols = 3
    rows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3 * rows), squeeze=False)
    for ax, (what, checks) in zip(axes.flat, series.items(), strict=False):
        ax.plot(range(len(checks)), [c.strata for c in checks], marker="o")
        ax.set_xticks(range(len(checks)))
        ax.set_xticklabels([c.variant for c in checks], fontsize=7)
        ax.set_title(what, fontsize=9)
        ax.set_ylabel(checks[0].unit, fontsize=8)
        ax.set_ylim(bottom=0)
    for ax in list(axes.flat)[len(series) :]:
        ax.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- chart --------------------------------------------------------------------------------


def _plotted(checks: Iterable[Check]) -> list[tuple[str, float, float, bool | None, str]]:
    """(label, plotted ratio, plotted target, met, target label) for checks with a target;
    an absolute target is plotted as value / limit against 1."""
    out = []
    for c in checks:
        if c.target is None:
            continue
        if c.target.kind == "absolute":
            x, t = c.strata / c.target.value, 1.0
            label = f"{c.scenario} ({c.variant}) ÷ limit"
        else:
            ratio = c.ratio
            if ratio is None:
                continue
            x, t = ratio, c.target.value
            label = f"{c.scenario} ({c.variant}) vs {c.against}"
        if x <= 0 or math.isnan(x):
            continue
        out.append((label, x, t, c.met, c.target.label))
    return out


def render_chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _plotted(c for _, c in checks_of(data))
    height = max(2.5, 0.42 * len(rows) + 1.4)
    fig, ax = plt.subplots(figsize=(11, height))
    if not rows:
        ax.text(0.5, 0.5, "no results with a target", ha="center", va="center")
        ax.set_axis_off()
    else:
        ys = list(range(len(rows)))[::-1]
        colors = [
            "#2e7d32" if met else "#c62828" if met is False else "#9e9e9e"
            for _, _, _, met, _ in rows
        ]
        ax.barh(ys, [x for _, x, _, _, _ in rows], color=colors, height=0.6)
        for y, (_, x, t, _, tlabel) in zip(ys, rows, strict=True):
            ax.plot([t, t], [y - 0.4, y + 0.4], color="black", linewidth=2)
            ax.annotate(
                f"{fmt_ratio(x)} (target {tlabel})",
                (max(x, t), y),
                xytext=(6, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        ax.set_yticks(ys)
        ax.set_yticklabels([label for label, _, _, _, _ in rows], fontsize=8)
        ax.set_xscale("log")
        lo = min(min(x, t) for _, x, t, _, _ in rows)
        hi = max(max(x, t) for _, x, t, _, _ in rows)
        ax.set_xlim(lo / 1.6, hi * 6)
        ax.axvline(1.0, color="#607d8b", linewidth=0.8, linestyle=":")
        ax.set_xlabel("Strata ÷ baseline (log scale); black tick = target; green met, red missed")
        meta = data.get("meta", {})
        ax.set_title(
            f"Strata vs baselines · {meta.get('date', '')} · {meta.get('nproc', '?')} CPUs "
            f"{meta.get('cpu', '')}",
            fontsize=10,
        )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
