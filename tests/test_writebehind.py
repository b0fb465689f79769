"""Write-behind queue: coalescing, batching, retries, dead letters, backpressure, lifecycle.

No servers: ``FakeL3`` is the ``apply`` coroutine. It records every call, keeps the rows it
was given, and can be told to hold calls, fail N times, or refuse some rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import replace
from itertools import count
from typing import Any

import pytest

from strata.errors import ConfigError, TierUnavailableError, WriteBehindError
from strata.writebehind import DeadLetter, PendingWrite, WriteBehindQueue

Key = tuple[str, Hashable]
MakeQueue = Callable[..., Awaitable[WriteBehindQueue]]

WAIT = 5.0  # a guard against hanging, never an expectation about timing
FLUSHER = "strata-write-behind-flusher"


class FakeL3:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[PendingWrite]]] = []  # copies, as apply saw them
        self.rows: dict[Key, Any] = {}
        self.fail_next = 0  # fail this many calls from now
        self.fail_if: Callable[[int], bool] = lambda call: False  # by call index
        self.error: Callable[[], BaseException] = lambda: RuntimeError("L3 refused the batch")
        self.poison: set[Hashable] = set()  # a batch holding one of these ids fails
        self.hold: asyncio.Event | None = None  # while set to an unset Event, calls wait
        self.entered = asyncio.Event()  # a call has started
        self.applied = asyncio.Event()  # a call has succeeded
        self.call_times: list[float] = []
        self.in_flight: set[Key] = set()
        self.overlaps: list[Key] = []  # keys handed to apply while already in flight

    async def __call__(self, schema: str, writes: list[PendingWrite]) -> None:
        keys = {(schema, w.id) for w in writes}
        assert all(w.schema == schema for w in writes)
        self.overlaps.extend(keys & self.in_flight)
        self.in_flight |= keys
        index = len(self.calls)
        self.calls.append((schema, [replace(w) for w in writes]))
        self.call_times.append(asyncio.get_running_loop().time())
        self.entered.set()
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.fail_next > 0:
                self.fail_next -= 1
                raise self.error()
            if self.fail_if(index):
                raise self.error()
            if any(w.id in self.poison for w in writes):
                raise ValueError("L3 refused a row")
            for w in writes:
                if w.op == "set":
                    self.rows[(schema, w.id)] = w.row
                else:
                    self.rows.pop((schema, w.id), None)
            self.applied.set()
        finally:
            self.in_flight -= keys

    def seen(self, id_: Hashable, schema: str = "players") -> list[PendingWrite]:
        """Every write of one key handed to apply, in order."""
        return [w for s, ws in self.calls if s == schema for w in ws if w.id == id_]


_versions = count(1)


def st(
    id_: Hashable, row: Any, *, schema: str = "players", version: int | None = None
) -> PendingWrite:
    v = next(_versions) if version is None else version
    return PendingWrite(schema=schema, id=id_, op="set", row=row, version=v)


def dl(id_: Hashable, *, schema: str = "players", version: int | None = None) -> PendingWrite:
    v = next(_versions) if version is None else version
    return PendingWrite(schema=schema, id=id_, op="delete", row=None, version=v)


async def settle() -> None:
    """Let every ready task run a few steps (the flusher included)."""
    for _ in range(20):
        await asyncio.sleep(0)


def flusher_running() -> bool:
    return any(t.get_name() == FLUSHER and not t.done() for t in asyncio.all_tasks())


@pytest.fixture
def l3() -> FakeL3:
    return FakeL3()


@pytest.fixture
async def make_queue() -> AsyncIterator[MakeQueue]:
    made: list[WriteBehindQueue] = []

    async def make(apply: FakeL3, **kwargs: Any) -> WriteBehindQueue:
        # Long interval: nothing is flushed unless the test asks for it (or a threshold does).
        kwargs.setdefault("flush_interval", 60.0)
        kwargs.setdefault("retry_base_delay", 0.001)
        kwargs.setdefault("retry_max_delay", 0.01)
        queue = WriteBehindQueue(apply, **kwargs)
        await queue.start()
        made.append(queue)
        return queue

    yield make
    for queue in made:
        with contextlib.suppress(WriteBehindError):
            await queue.close(timeout=WAIT)


# -- coalescing -----------------------------------------------------------------------------


async def test_repeated_sets_of_one_key_apply_only_the_last_row(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    q = await make_queue(l3)
    for i in range(10):
        await q.put(st("k", f"row{i}"))
    assert q.pending == 1
    await q.flush()
    assert [(w.op, w.row) for w in l3.seen("k")] == [("set", "row9")]
    assert l3.rows == {("players", "k"): "row9"}


async def test_delete_replaces_queued_set_and_is_applied(l3: FakeL3, make_queue: MakeQueue) -> None:
    l3.rows[("players", "k")] = "stored"
    q = await make_queue(l3)
    await q.put(st("k", "new"))
    await q.put(dl("k"))
    await q.flush()
    assert [(w.op, w.row) for w in l3.seen("k")] == [("delete", None)]
    assert ("players", "k") not in l3.rows


async def test_set_after_queued_delete_replaces_the_delete(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    l3.rows[("players", "k")] = "stored"
    q = await make_queue(l3)
    await q.put(dl("k"))
    await q.put(st("k", "again"))
    await q.flush()
    assert [(w.op, w.row) for w in l3.seen("k")] == [("set", "again")]
    assert l3.rows == {("players", "k"): "again"}


async def test_write_older_than_the_queued_one_is_ignored(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    q = await make_queue(l3)
    await q.put(st("k", "new", version=5))
    await q.put(st("k", "late and stale", version=3))
    await q.flush()
    assert l3.rows == {("players", "k"): "new"}


async def test_replaced_write_keeps_the_time_its_key_was_first_queued(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    now = [100.0]
    q = await make_queue(l3, clock=lambda: now[0])
    await q.put(st("k", "v1"))
    now[0] = 105.0
    await q.put(st("k", "v2"))
    await q.put(st("other", "x"))
    await q.flush()
    assert [(w.row, w.first_queued) for w in l3.seen("k")] == [("v2", 100.0)]
    assert [w.first_queued for w in l3.seen("other")] == [105.0]


# -- flushing -------------------------------------------------------------------------------


async def test_reaching_flush_threshold_wakes_flusher_before_the_interval(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    q = await make_queue(l3, flush_interval=60.0, flush_threshold=3)
    await q.put(st("a", 1))
    await q.put(st("b", 2))
    await settle()
    assert l3.calls == []  # below the threshold, the flusher waits for its 60 s interval
    await q.put(st("c", 3))
    await asyncio.wait_for(l3.applied.wait(), WAIT)
    assert sorted(str(w.id) for w in l3.calls[0][1]) == ["a", "b", "c"]


async def test_writes_are_flushed_every_interval_without_a_flush_call(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    q = await make_queue(l3, flush_interval=0.01)
    await q.put(st("a", 1))
    await asyncio.wait_for(l3.applied.wait(), WAIT)
    assert l3.rows == {("players", "a"): 1}


async def test_batches_hold_one_schema_and_at_most_max_batch_writes(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    q = await make_queue(l3, max_batch=3)
    for i in range(5):
        await q.put(st(f"p{i}", i, schema="players"))
        if i < 2:
            await q.put(st(f"g{i}", i, schema="guilds"))
    await q.flush()
    for schema, writes in l3.calls:
        assert 1 <= len(writes) <= 3
        assert {w.schema for w in writes} == {schema}
    assert sorted(k for k in l3.rows) == sorted(
        [("players", f"p{i}") for i in range(5)] + [("guilds", f"g{i}") for i in range(2)]
    )


async def test_sets_and_deletes_share_a_batch(l3: FakeL3, make_queue: MakeQueue) -> None:
    l3.rows[("players", "gone")] = "stored"
    q = await make_queue(l3)
    await q.put(st("kept", 1))
    await q.put(dl("gone"))
    await q.flush()
    assert len(l3.calls) == 1
    assert sorted((w.id, w.op) for w in l3.calls[0][1]) == [("gone", "delete"), ("kept", "set")]
    assert l3.rows == {("players", "kept"): 1}


async def test_flush_waits_for_writes_queued_before_it(l3: FakeL3, make_queue: MakeQueue) -> None:
    l3.hold = asyncio.Event()
    q = await make_queue(l3)
    await q.put(st("a", 1))
    flushing = asyncio.create_task(q.flush())
    await asyncio.wait_for(l3.entered.wait(), WAIT)
    await settle()
    assert not flushing.done()  # the write is still in flight
    l3.hold.set()
    await asyncio.wait_for(flushing, WAIT)
    assert l3.rows == {("players", "a"): 1}
    assert q.pending == 0


async def test_flush_does_not_wait_for_writes_queued_after_it(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    l3.hold = asyncio.Event()
    q = await make_queue(l3)
    await q.put(st("a", 1))
    flushing = asyncio.create_task(q.flush())
    await asyncio.wait_for(l3.entered.wait(), WAIT)
    await q.put(st("b", 2))
    l3.hold.set()
    await asyncio.wait_for(flushing, WAIT)
    assert l3.rows == {("players", "a"): 1}
    assert q.pending == 1  # b waits for the next interval


async def test_flush_follows_a_queued_write_through_its_replacement(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    l3.hold = asyncio.Event()
    q = await make_queue(l3, max_batch=1)
    await q.put(st("busy", 0))
    await q.put(st("k", "v1"))
    flushing = asyncio.create_task(q.flush())
    await asyncio.wait_for(l3.entered.wait(), WAIT)  # "busy" in flight, k v1 still queued
    # k v1 was queued before the flush; replaced now, the flush must wait for v2 instead.
    await q.put(st("k", "v2"))
    l3.hold.set()
    await asyncio.wait_for(flushing, WAIT)
    assert [w.row for w in l3.seen("k")] == ["v2"]
    assert l3.rows[("players", "k")] == "v2"


async def test_flush_raises_write_behind_error_when_it_times_out(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    l3.hold = asyncio.Event()
    q = await make_queue(l3)
    await q.put(st("a", 1))
    with pytest.raises(WriteBehindError, match="timed out"):
        await q.flush(timeout=0.05)
    l3.hold.set()
    await q.flush()
    assert l3.rows == {("players", "a"): 1}


async def test_pending_counts_queued_and_in_flight_writes(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    l3.hold = asyncio.Event()
    q = await make_queue(l3)
    await q.put(st("a", 1))
    await q.put(st("b", 2))
    assert q.pending == 2
    flushing = asyncio.create_task(q.flush())
    await asyncio.wait_for(l3.entered.wait(), WAIT)
    await q.put(st("c", 3))
    assert q.pending == 3
    l3.hold.set()
    await asyncio.wait_for(flushing, WAIT)
    await q.flush()
    assert q.pending == 0


# -- failures -------------------------------------------------------------------------------


async def test_failed_batch_is_retried_with_backoff_until_it_succeeds(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    l3.fail_next = 2
    q = await make_queue(l3, retry_base_delay=0.02, retry_max_delay=1.0, max_retry=5)
    await q.put(st("a", 1))
    await q.flush()
    assert l3.rows == {("players", "a"): 1}
    assert [w.attempts for w in l3.seen("a")] == [0, 1, 2]
    gaps = [b - a for a, b in zip(l3.call_times, l3.call_times[1:], strict=False)]
    # base * 2**(attempts - 1), jittered down by at most half: >= 0.01 s, then >= 0.02 s.
    assert gaps[0] >= 0.01 * 0.99
    assert gaps[1] >= 0.02 * 0.99
    assert q.dead_letters() == []


def test_retry_delay_doubles_per_attempt_up_to_the_cap(l3: FakeL3) -> None:
    q = WriteBehindQueue(l3, retry_base_delay=0.1, retry_max_delay=1.0)
    for attempts in range(1, 10):
        full = min(1.0, 0.1 * 2 ** (attempts - 1))
        for _ in range(20):
            assert full / 2 <= q.retry_delay(attempts) <= full


async def test_newer_write_queued_during_a_failing_batch_wins_and_the_old_is_not_retried(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    l3.hold = asyncio.Event()
    l3.fail_next = 1
    q = await make_queue(l3)
    await q.put(st("k", "v1"))
    flushing = asyncio.create_task(q.flush())
    await asyncio.wait_for(l3.entered.wait(), WAIT)
    await q.put(st("k", "v2"))  # queued while v1 is in flight (and about to fail)
    l3.hold.set()
    await asyncio.wait_for(flushing, WAIT)  # waits for v2, which took v1's place
    assert [w.row for w in l3.seen("k")] == ["v1", "v2"]  # v1 failed once, never again
    assert l3.rows == {("players", "k"): "v2"}
    assert q.dead_letters() == []


async def test_write_to_a_key_in_flight_waits_for_that_write_to_finish(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    l3.hold = asyncio.Event()
    q = await make_queue(l3)
    await q.put(st("k", "v1"))
    flushing = asyncio.create_task(q.flush())
    await asyncio.wait_for(l3.entered.wait(), WAIT)
    await q.put(st("k", "v2"))
    second = asyncio.create_task(q.flush())  # asks for v2 while v1 is in flight
    await settle()
    assert [w.row for w in l3.seen("k")] == ["v1"]
    l3.hold.set()
    await asyncio.wait_for(asyncio.gather(flushing, second), WAIT)
    assert [w.row for w in l3.seen("k")] == ["v1", "v2"]
    assert l3.overlaps == []
    assert l3.rows == {("players", "k"): "v2"}


async def test_write_is_dead_lettered_after_max_retry_and_later_writes_still_flush(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    hooked: list[DeadLetter] = []

    async def on_dead_letter(letter: DeadLetter) -> None:
        hooked.append(letter)

    l3.poison = {"bad"}
    q = await make_queue(l3, max_retry=3, on_dead_letter=on_dead_letter)
    await q.put(st("bad", "x"))
    await q.flush()  # a dead-lettered write counts as done
    assert len(l3.seen("bad")) == 3
    [letter] = q.dead_letters()
    assert (letter.write.id, letter.write.attempts) == ("bad", 3)
    assert isinstance(letter.error, ValueError)
    assert hooked == [letter]
    assert q.pending == 0

    await q.put(st("good", "y"))
    await q.flush()
    assert l3.rows == {("players", "good"): "y"}


async def test_failing_dead_letter_hook_is_reported_to_on_error(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    errors: list[BaseException] = []

    def on_dead_letter(letter: DeadLetter) -> None:
        raise KeyError("hook is broken")

    l3.poison = {"bad"}
    q = await make_queue(l3, max_retry=1, on_dead_letter=on_dead_letter, on_error=errors.append)
    await q.put(st("bad", "x"))
    await q.flush()
    assert [type(e) for e in errors] == [ValueError, KeyError]  # the batch, then the hook
    assert len(q.dead_letters()) == 1
    await q.put(st("good", "y"))
    await q.flush()
    assert l3.rows == {("players", "good"): "y"}


async def test_poison_write_is_isolated_and_the_rest_of_its_batch_lands(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    l3.poison = {7}
    q = await make_queue(l3, max_retry=2)
    for i in range(20):
        await q.put(st(i, f"row{i}"))
    await q.flush()
    assert [letter.write.id for letter in q.dead_letters()] == [7]
    assert l3.rows == {("players", i): f"row{i}" for i in range(20) if i != 7}


async def test_unreachable_l3_dead_letters_the_batch_without_bisecting(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    l3.fail_next = 10**6
    l3.error = lambda: TierUnavailableError("connection refused", tier="l3")
    q = await make_queue(l3, max_retry=3)
    for i in range(8):
        await q.put(st(i, i))
    await q.flush()
    assert len(l3.calls) == 3  # the same batch three times, not split into 15 calls
    assert sorted(str(d.write.id) for d in q.dead_letters()) == [str(i) for i in range(8)]


async def test_failed_batch_logs_one_warning_and_calls_on_error_once(
    l3: FakeL3, make_queue: MakeQueue, caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("test.strata.writebehind")
    errors: list[BaseException] = []
    l3.fail_next = 1
    q = await make_queue(l3, logger=log, on_error=errors.append)
    for i in range(50):
        await q.put(st(i, i))
    with caplog.at_level(logging.WARNING, logger=log.name):
        await q.flush()
    warnings = [r for r in caplog.records if r.name == log.name]
    assert len(warnings) == 1
    assert warnings[0].exc_info is not None and "refused" in str(warnings[0].exc_info[1])
    assert len(errors) == 1
    assert len(l3.rows) == 50


async def test_cancellation_raised_inside_apply_is_a_failed_batch(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    l3.fail_next = 1
    l3.error = asyncio.CancelledError  # e.g. a driver's own timeout, not the flusher's
    q = await make_queue(l3)
    await q.put(st("a", 1))
    await q.flush()
    assert l3.rows == {("players", "a"): 1}
    assert len(l3.calls) == 2


async def test_flusher_cancelled_from_outside_fails_flush_and_put_instead_of_hanging(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    q = await make_queue(l3)
    await q.put(st("a", 1))
    [flusher] = [t for t in asyncio.all_tasks() if t.get_name() == FLUSHER]
    flusher.cancel()
    await asyncio.wait([flusher])
    with pytest.raises(WriteBehindError, match="stopped"):
        await q.flush()
    with pytest.raises(WriteBehindError, match="stopped"):
        await q.put(st("b", 2))
    with pytest.raises(WriteBehindError) as raised:
        await q.close()
    assert [d.write.id for d in raised.value.dead_letters] == ["a"]


async def test_cancel_drops_queued_writes_of_those_keys(l3: FakeL3, make_queue: MakeQueue) -> None:
    q = await make_queue(l3)
    for id_ in ("a", "b", "c"):
        await q.put(st(id_, id_))
    assert q.cancel("players", ["a", "b", "not queued"]) == 2
    assert q.cancel("guilds", ["c"]) == 0
    await q.flush()
    assert l3.rows == {("players", "c"): "c"}


async def test_cancelled_write_in_flight_is_not_retried(l3: FakeL3, make_queue: MakeQueue) -> None:
    l3.hold = asyncio.Event()
    l3.fail_next = 1
    q = await make_queue(l3)
    await q.put(st("a", 1))
    flushing = asyncio.create_task(q.flush())
    await asyncio.wait_for(l3.entered.wait(), WAIT)
    assert q.cancel("players", ["a"]) == 0  # nothing queued; the one in flight is marked
    l3.hold.set()
    await asyncio.wait_for(flushing, WAIT)
    assert len(l3.calls) == 1
    assert q.dead_letters() == []
    assert q.pending == 0


async def test_retry_dead_letters_queues_them_again(l3: FakeL3, make_queue: MakeQueue) -> None:
    l3.poison = {"bad"}
    q = await make_queue(l3, max_retry=1)
    await q.put(st("bad", "x"))
    await q.flush()
    assert len(q.dead_letters()) == 1
    l3.poison = set()
    assert await q.retry_dead_letters() == 1
    assert q.dead_letters() == []
    await q.flush()
    assert l3.rows == {("players", "bad"): "x"}
    assert l3.seen("bad")[-1].attempts == 0


async def test_clear_dead_letters_returns_and_forgets_them(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    l3.poison = {"bad"}
    q = await make_queue(l3, max_retry=1)
    await q.put(st("bad", "x"))
    await q.flush()
    assert [letter.write.id for letter in q.clear_dead_letters()] == ["bad"]
    assert q.dead_letters() == []


# -- backpressure ---------------------------------------------------------------------------


async def test_put_waits_while_pending_is_at_max_pending(l3: FakeL3, make_queue: MakeQueue) -> None:
    l3.hold = asyncio.Event()
    q = await make_queue(l3, max_pending=2)
    await q.put(st("a", 1))
    await q.put(st("b", 2))
    third = asyncio.create_task(q.put(st("c", 3)))
    # The blocked put wakes the flusher (no 60 s wait); a and b are now in flight.
    await asyncio.wait_for(l3.entered.wait(), WAIT)
    await settle()
    assert not third.done()
    assert q.pending == 2
    l3.hold.set()
    await asyncio.wait_for(third, WAIT)
    await q.flush()
    assert set(l3.rows) == {("players", "a"), ("players", "b"), ("players", "c")}


async def test_put_waiting_for_room_raises_when_the_queue_closes(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    l3.hold = asyncio.Event()
    q = await make_queue(l3, max_pending=1)
    await q.put(st("a", 1))
    blocked = asyncio.create_task(q.put(st("b", 2)))
    await asyncio.wait_for(l3.entered.wait(), WAIT)
    closing = asyncio.create_task(q.close())
    with pytest.raises(WriteBehindError, match="closed"):
        await asyncio.wait_for(blocked, WAIT)
    l3.hold.set()
    await asyncio.wait_for(closing, WAIT)
    assert l3.rows == {("players", "a"): 1}


# -- lifecycle ------------------------------------------------------------------------------


async def test_close_flushes_pending_writes_and_stops_the_flusher(l3: FakeL3) -> None:
    q = WriteBehindQueue(l3, flush_interval=60.0)
    await q.start()
    assert flusher_running()
    await q.put(st("a", 1))
    await q.put(dl("b"))
    await q.close()
    assert l3.rows == {("players", "a"): 1}
    assert len(l3.calls) == 1
    assert q.pending == 0
    assert not flusher_running()


async def test_put_after_close_raises(l3: FakeL3) -> None:
    q = WriteBehindQueue(l3)
    await q.start()
    await q.close()
    with pytest.raises(WriteBehindError, match="closed"):
        await q.put(st("a", 1))
    await q.close()  # idempotent
    with pytest.raises(WriteBehindError):
        await q.start()


async def test_put_before_start_raises(l3: FakeL3) -> None:
    q = WriteBehindQueue(l3)
    with pytest.raises(WriteBehindError, match="start"):
        await q.put(st("a", 1))


async def test_queue_as_async_context_manager_flushes_on_exit(l3: FakeL3) -> None:
    async with WriteBehindQueue(l3, flush_interval=60.0) as q:
        await q.put(st("a", 1))
    assert l3.rows == {("players", "a"): 1}
    assert not flusher_running()


async def test_close_terminates_when_apply_always_fails(l3: FakeL3) -> None:
    l3.fail_next = 10**6
    q = WriteBehindQueue(l3, max_retry=3, retry_base_delay=0.001, retry_max_delay=0.01)
    await q.start()
    for i in range(5):
        await q.put(st(i, i))
    await asyncio.wait_for(q.close(), WAIT)
    assert sorted(str(d.write.id) for d in q.dead_letters()) == [str(i) for i in range(5)]
    assert q.pending == 0
    assert not flusher_running()


async def test_close_that_times_out_dead_letters_what_is_left_and_raises(l3: FakeL3) -> None:
    l3.hold = asyncio.Event()  # never released: apply hangs
    hooked: list[DeadLetter] = []
    q = WriteBehindQueue(l3, on_dead_letter=hooked.append)
    await q.start()
    await q.put(st("a", 1))
    await q.put(st("b", 2, schema="guilds"))
    with pytest.raises(WriteBehindError) as raised:
        await q.close(timeout=0.05)
    assert sorted(d.write.id for d in raised.value.dead_letters) == ["a", "b"]
    assert sorted(str(d.write.id) for d in q.dead_letters()) == ["a", "b"]
    assert len(hooked) == 2
    assert q.pending == 0
    assert not flusher_running()
    with pytest.raises(WriteBehindError):
        await q.put(st("c", 3))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"flush_interval": 0},
        {"flush_interval": float("inf")},
        {"flush_threshold": 0},
        {"max_retry": 0},
        {"max_pending": 0},
        {"max_batch": 0},
        {"max_batch": True},
        {"retry_base_delay": -1},
        {"retry_max_delay": float("nan")},
        {"on_dead_letter": "not callable"},
    ],
)
def test_invalid_settings_raise_config_error(l3: FakeL3, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        WriteBehindQueue(l3, **kwargs)


# -- at scale -------------------------------------------------------------------------------


async def test_ten_thousand_puts_over_a_thousand_keys_land_with_last_values(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    rng = random.Random(7)
    q = await make_queue(l3, flush_interval=0.005, flush_threshold=200, max_batch=300)
    last: dict[Key, Any] = {}
    for n in range(10_000):
        id_ = rng.randrange(1000)
        schema = "players" if id_ % 3 else "guilds"
        if rng.random() < 0.1:
            await q.put(dl(id_, schema=schema))
            last.pop((schema, id_), None)
        else:
            await q.put(st(id_, n, schema=schema))
            last[(schema, id_)] = n
        if n % 97 == 0:
            await asyncio.sleep(0)  # let the flusher run between puts
    await q.flush()
    assert l3.rows == last
    assert l3.overlaps == []
    assert q.pending == 0


async def test_thousands_of_puts_land_with_last_values_despite_failures_and_backpressure(
    l3: FakeL3, make_queue: MakeQueue
) -> None:
    rng = random.Random(11)
    l3.fail_if = lambda call: call % 4 == 1  # every fourth call fails once
    q = await make_queue(
        l3,
        flush_interval=0.005,
        flush_threshold=100,
        max_batch=150,
        max_pending=250,
        max_retry=20,  # a batch may be unlucky several times in a row; none is poisonous
    )
    last: dict[Key, Any] = {}
    for n in range(5_000):
        id_ = rng.randrange(1000)
        await q.put(st(id_, n))
        last[("players", id_)] = n
        assert q.pending <= 250
    await q.flush()
    assert l3.rows == last
    assert q.dead_letters() == []
    assert l3.overlaps == []
