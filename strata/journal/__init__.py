"""Write-behind's durable parts: the Redis journal and the in-process queue's building blocks.

    entry.py     a journal entry (the sealed L3 row, packed) and its codec
    scripts.py   the Lua scripts: L2 value + journal entry in one step; release after flush
    flusher.py   the consumer-group flusher: claim, coalesce, apply, back off, dead-letter
    host.py      the router's side: applying entries to L3, refusals, the dead-letter API
    pending.py   the in-process queue's writes, dead letters and failure plan
                 (``strata.writebehind``, used without Redis)

Nothing is imported here: ``import strata.journal`` stays cheap.
"""
