"""The router: the only code that knows the tier order L1 -> L2 -> L3.

    binding.py    per-schema settings, resolved once at register (immutable)
    rows.py       model <-> L3 row, projections
    core.py       what the parts share: tiers, counters, per-schema Route (mutable state)
    reads.py      get / get_many / exists: single flight, negative cache, fills
    writes.py     WritePath per write mode (chosen once at register) + the shared steps
    queries.py    search / search_cached / count, read replicas, warm_cache
    coherence.py  publish, invalidations from other instances, L1 reset, L2 repair

``strata.datastore.DataStore`` is the facade over these; ``strata.tx`` reaches them
through its ``TxHost`` protocol.
"""
