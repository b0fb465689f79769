"""The Strata benchmark harness: Strata against the raw drivers and the libraries users pick
instead, measured side by side in one run.

    python -m benchmarks                     every scenario, one process each
    python -m benchmarks --quick             fewer rounds and smaller sizes
    python -m benchmarks --scenario get_l1   one scenario (repeatable); the others keep
                                             their last results in the report

    __main__ (orchestrator)
      │  checks PostgreSQL and Redis answer
      ├─► python -m benchmarks.scenarios.<name> --json <tmp>   one process per scenario
      │     harness.run_scenario: CREATE SCHEMA bench_<random>, a key prefix of the same
      │     name; the scenario alternates Strata and its baselines in rounds (rotating
      │     who goes first) so machine drift cancels; median per operation; ratios to
      │     the baselines measured in the same process; DROP SCHEMA and DEL of its own
      │     keys at the end (never FLUSHDB)
      └─► results/latest.json (merged by scenario) ─► results/latest.md, results/ratios.png

Benchmarks are not tests: nothing here fails because of a number. A crashed scenario is
reported and makes the exit status non-zero; a missed target only says "missed".
"""
