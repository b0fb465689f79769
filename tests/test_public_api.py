"""The public face: a sorted, complete __all__, and examples that run as written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import strata

ROOT = Path(__file__).resolve().parent.parent


def test_all_is_sorted_and_complete() -> None:
    assert strata.__all__ == sorted(strata.__all__)
    # (pytest's assertion rewriting, applied to strata because strata ships a pytest plugin,
    # adds "@py_builtins" and "@pytest_ar": not identifiers, so never public names.)
    public = {n for n in vars(strata) if n.isidentifier() and not n.startswith("_")}
    public -= {"annotations"}
    modules = {
        "config",
        "crypto",
        "datastore",
        "errors",
        "fields",
        "observability",
        "query",
        "schema",
        "tiers",
        "tx",
        "codec",
        "columns",
        "invalidation",
        "writebehind",
        "journal",
        "migrations",
        "cli",
        "router",
        "hooks",
        "cache",
        "clock",
        "oplog",
        "rotate",
        "sync",
        "contrib",
        "tasks",
        "testing",
    }
    assert public - modules - set(strata.__all__) == set()
    for name in strata.__all__:
        assert hasattr(strata, name), name


def test_design_names_are_exported() -> None:
    for name in (
        "DataStore",
        "Config",
        "Schema",
        "MemPolicy",
        "RedisPolicy",
        "PostgresPolicy",
        "WriteMode",
        "Eviction",
        "Index",
        "SchemaHooks",
        "Field",
        "Q",
        "Query",
        "Stats",
    ):
        assert name in strata.__all__


@pytest.mark.parametrize("example", ["quickstart.py", "transfer.py", "keyed_cache.py"])
def test_example_runs_on_the_embedded_default(example: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def readme_programs() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = text.split("```python\n")[1:]
    return [b.split("\n```", 1)[0] for b in blocks]


README_PROGRAMS = 10  # four of them in "Running in production"


def test_readme_has_runnable_examples() -> None:
    assert len(readme_programs()) == README_PROGRAMS


@pytest.mark.parametrize("index", range(README_PROGRAMS))
def test_readme_example_runs(index: int, tmp_path: Path) -> None:
    program = readme_programs()[index]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_quickstart_says_which_tier_served_each_read_and_why_a_field_is_default(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    reads = [line for line in done.stdout.splitlines() if line.startswith("read")]
    assert ["served by L1" in r or "<- L1" in r for r in reads] == [True, False, False, True]
    assert ["L3 (the database)" in r for r in reads] == [False, True, True, False]
    assert "omit_cache=True" in done.stdout
    assert "password_hash still 'x'" in done.stdout
