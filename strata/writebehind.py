"""Write-behind: the queue of pending L3 writes and the flusher that applies them in batches.

The router writes L1 and L2 at once and hands the L3 write to this queue; it knows nothing of
any database: ``apply(schema, writes)`` is the router's coroutine that writes one batch.

    put(write) ── key (schema, id) queued? ── yes ──► replaced in place: the newest version
      │                                              wins (set or delete), the entry keeps its
      │ no                                           place and its age
      ▼
    queued ──── every flush_interval, at once when flush_threshold are queued, on flush() ───┐
                                                                                             ▼
         flusher: one batch at a time, one schema per batch, at most max_batch writes; a key
         in flight is held back, so two writes of one key never overtake each other
                                                                                             │
                                            apply(schema, batch) ◄───────────────────────────┘
                                            ok │           │ raised (on_error, one log line)
                                      done ◄───┘           ▼
                  a newer write of the key queued meanwhile, or cancel()? ── yes ──► dropped
                                                           │ no
                                                           ▼
                  retried with backoff, then dead-lettered or bisected: see plan_failure
                  in strata/journal/pending.py

Nothing leaves the queue silently: a write is applied, superseded by a newer write of its key,
cancelled (a transaction wrote the key itself) or dead-lettered. ``flush()`` waits for every
write queued before it, following it through coalescing: when a queued write is replaced, the
newer one inherits its place in line, so the flush waits for it. The flusher is the queue's
own task; it runs on the event loop, needs no locks, and ends on ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import replace
from heapq import heappop, heappush
from itertools import chain, count, islice
from types import TracebackType

from strata.errors import WriteBehindError
from strata.journal import pending as parts
from strata.journal.pending import UNREACHABLE, Apply, DeadLetter, DeadLetterHook, PendingWrite
from strata.tasks import raise_if_cancelled, stop_tasks

__all__ = ["DeadLetter", "PendingWrite", "WriteBehindQueue"]


class WriteBehindQueue:
    """Pending L3 writes, coalesced per key, applied in batches by a background flusher.

    ``apply(schema, writes)`` writes one batch (sets and deletes together) to L3 and raises
    if it failed; it is called for one schema at a time, never concurrently with itself.
    Use it from one event loop: ``await start()``, ``put`` ..., ``await close()`` (or
    ``async with queue:``).
    """

    def __init__(
        self,
        apply: Apply,
        *,
        flush_interval: float = 0.5,
        flush_threshold: int = 500,
        max_retry: int = 5,
        max_pending: int = 100_000,
        max_batch: int = 5_000,
        retry_base_delay: float = 0.05,
        retry_max_delay: float = 5.0,
        on_dead_letter: DeadLetterHook | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts.check_settings(
            apply,
            flush_interval,
            {
                "flush_threshold": flush_threshold,
                "max_retry": max_retry,
                "max_pending": max_pending,
                "max_batch": max_batch,
            },
            {"retry_base_delay": retry_base_delay, "retry_max_delay": retry_max_delay},
            {"on_dead_letter": on_dead_letter, "on_error": on_error, "clock": clock},
        )
        self._apply = apply
        self._interval = float(flush_interval)
        self._threshold = flush_threshold
        self._max_retry = max_retry
        self._max_pending = max_pending
        self._max_batch = max_batch
        self._retry_base = float(retry_base_delay)
        self._retry_max = float(retry_max_delay)
        self._on_dead_letter = on_dead_letter
        self._on_error = on_error
        self._log = logger if logger is not None else logging.getLogger("strata")
        self._clock = clock

        # Fresh writes, per schema, in the order their keys became dirty.
        self._queues: dict[str, dict[Hashable, parts.Entry]] = {}
        self._queued = 0  # entries in _queues
        # Failed writes waiting for their retry: key -> its group, and the groups by due time
        # (loop time, tie-breaker, group); a group emptied by newer puts is skipped when due.
        self._retrying: dict[tuple[str, Hashable], parts.Group] = {}
        self._due: list[tuple[float, int, parts.Group]] = []
        self._tie = count()
        self._in_flight: dict[tuple[str, Hashable], parts.Entry] = {}
        self._dead: list[DeadLetter] = []
        self._seq = 0  # puts accepted so far
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (flush target, future)
        self._wake = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self._closed = asyncio.Event()
        self._state = parts.State.NEW
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._crash: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the flusher task. Idempotent while running; refused after close."""
        if self._state is parts.State.RUNNING:
            return
        if self._state is not parts.State.NEW:
            raise WriteBehindError("write-behind queue is closed; it cannot be started again")
        self._task = asyncio.create_task(self._run(), name="strata-write-behind-flusher")
        self._task.add_done_callback(self._flusher_done)
        self._state = parts.State.RUNNING

    async def close(self, timeout: float | None = None) -> None:
        """Flush everything, then stop the flusher. Later ``put`` calls raise.

        Puts still waiting for room when the close begins raise too. If the flush does not
        finish within ``timeout`` seconds (or the flusher died), the flusher is cancelled, the
        writes left are dead-lettered and ``WriteBehindError`` is raised with them.
        """
        if self._state is parts.State.CLOSED:
            return
        if self._state is parts.State.CLOSING:
            await self._closed.wait()
            return
        if self._state is parts.State.NEW:
            self._state = parts.State.CLOSED
            self._closed.set()
            return
        self._state = parts.State.CLOSING
        self._not_full.set()  # waiting puts wake up to find the queue closing
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        task = self._task
        error: WriteBehindError | None = None
        try:
            try:
                await self.flush(timeout)
            except WriteBehindError as exc:
                error = exc
            self._stopping = True
            self._wake.set()
            if task is not None and not task.done():
                if error is None:
                    remaining = None if deadline is None else max(0.0, deadline - loop.time())
                    await asyncio.wait([task], timeout=remaining)
                await stop_tasks([task])  # (returns at once if it ended)
            left = await self._abandon(error or WriteBehindError("write-behind flusher stopped"))
        finally:
            if task is not None and not task.done():  # close() itself was cancelled
                self._stopping = True
                task.cancel()
                self._bury(WriteBehindError("write-behind close was cancelled"))
            self._state = parts.State.CLOSED
            self._closed.set()
        if error is not None:
            raise WriteBehindError(
                f"write-behind close: {error}; {len(left)} writes dead-lettered",
                dead_letters=left,
            ) from error

    async def __aenter__(self) -> WriteBehindQueue:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- writes ------------------------------------------------------------------------------

    async def put(self, write: PendingWrite) -> None:
        """Queue a set or delete, replacing any queued write of the same key.

        A write older (lower version) than one already queued or in flight for its key is
        ignored: the newer one wins. Waits while ``pending >= max_pending``.
        """
        await self._put(write)

    def cancel(self, schema: str, ids: Iterable[Hashable]) -> int:
        """Drop the queued writes of these keys (a transaction wrote them itself).

        Returns how many queued writes were dropped. A write of one of these keys that is in
        flight is left to finish but is never retried.
        """
        queue = self._queues.get(schema)
        dropped = 0
        for id_ in ids:
            key = (schema, id_)
            if queue is not None and queue.pop(id_, None) is not None:
                self._queued -= 1
                dropped += 1
            group = self._retrying.pop(key, None)
            if group is not None:
                del group.entries[id_]
                dropped += 1
            flying = self._in_flight.get(key)
            if flying is not None:
                flying.cancelled = True
        if queue is not None and not queue:
            del self._queues[schema]
        if dropped:
            self._settle()
        return dropped

    async def flush(self, timeout: float | None = None) -> None:
        """Return once every write queued before the call is applied or dead-lettered.

        Raises ``WriteBehindError`` after ``timeout`` seconds, or if the flusher died.
        """
        if self._crash is not None and self.pending:
            raise WriteBehindError(
                "write-behind flusher has stopped", dead_letters=self._dead
            ) from self._crash
        if self._oldest_seq() > self._seq:
            return
        if self._task is None or self._task.done():
            raise WriteBehindError("write-behind queue is not running: call start() first")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._seq, future))
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            self._waiters = [w for w in self._waiters if w[1] is not future]
            raise WriteBehindError(
                f"write-behind flush timed out after {timeout}s; {self.pending} writes pending",
                dead_letters=self._dead,
            ) from None

    @property
    def pending(self) -> int:
        """Writes queued, waiting for a retry, or in flight."""
        return self._queued + len(self._retrying) + len(self._in_flight)

    # -- dead letters ------------------------------------------------------------------------

    def dead_letters(self) -> list[DeadLetter]:
        """The writes given up on, oldest first (a copy)."""
        return list(self._dead)

    def clear_dead_letters(self) -> list[DeadLetter]:
        """Forget the dead letters; returns them."""
        letters, self._dead = self._dead, []
        return letters

    def forget_dead_letters(self, letters: Iterable[DeadLetter]) -> None:
        """Forget these dead letters (the others stay)."""
        gone = {id(d) for d in letters}
        self._dead = [d for d in self._dead if id(d) not in gone]

    async def retry_dead_letters(self) -> int:
        """Queue the dead letters again (attempts reset); returns how many were queued.

        One whose key has a newer write queued or in flight is dropped instead: the newer
        write wins, as in ``put``.
        """
        letters, self._dead = self._dead, []
        queued = 0
        for i, letter in enumerate(letters):
            try:
                queued += await self._put(replace(letter.write, attempts=0))
            except BaseException:
                self._dead[:0] = letters[i:]  # not queued: keep them inspectable
                raise
        return queued

    def retry_delay(self, attempts: int) -> float:
        """Seconds before retrying a batch that has failed ``attempts`` times."""
        return parts.backoff(attempts, self._retry_base, self._retry_max)

    # -- internals: queueing -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._crash is not None:
            raise WriteBehindError("write-behind flusher has stopped") from self._crash
        if self._state is parts.State.NEW:
            raise WriteBehindError("write-behind queue is not started: call start() first")
        if self._state is not parts.State.RUNNING:
            raise WriteBehindError("write-behind queue is closed")

    async def _put(self, write: PendingWrite) -> bool:
        self._check_open()
        while self.pending >= self._max_pending:
            self._not_full.clear()
            self._wake.set()  # a full queue is flushed now, not at the next interval
            await self._not_full.wait()
            self._check_open()
        accepted = self._enqueue(write)
        if self._queued >= self._threshold:
            self._wake.set()
        return accepted

    def _enqueue(self, write: PendingWrite) -> bool:
        schema, id_ = write.schema, write.id
        key = (schema, id_)
        queue = self._queues.get(schema)
        older = queue.get(id_) if queue is not None else None
        group = self._retrying.get(key) if older is None else None
        if group is not None:
            older = group.entries[id_]
        flying = self._in_flight.get(key)
        for held in (older, flying):
            if held is not None and write.version < held.write.version:
                self._log.debug(
                    "write-behind: ignored %s of %s %r at version %d, older than version %d",
                    write.op,
                    schema,
                    id_,
                    write.version,
                    held.write.version,
                )
                return False

        self._seq += 1
        entry = parts.Entry(write, self._seq)
        if older is None:
            write.first_queued = self._clock()
        else:
            entry.seq = older.seq
            write.first_queued = older.write.first_queued
        if group is not None:  # the failed older write waits no more: the newer one replaces it
            del group.entries[id_]
            del self._retrying[key]
        if queue is None:
            queue = self._queues[schema] = {}
        if id_ not in queue:
            self._queued += 1
        queue[id_] = entry  # an existing key keeps its place in line
        return True

    def _entries(self) -> Iterator[parts.Entry]:
        """Every write not yet done: in flight, waiting for a retry, queued."""
        return chain(
            self._in_flight.values(),
            (group.entries[id_] for (_, id_), group in self._retrying.items()),
            chain.from_iterable(q.values() for q in self._queues.values()),
        )

    def _oldest_seq(self) -> int:
        """The smallest seq of any write not yet done; beyond ``_seq`` when there is none."""
        return min((e.seq for e in self._entries()), default=self._seq + 1)

    def _settle(self) -> None:
        """Let waiting puts and flushes go once what they wait for is done."""
        if self.pending < self._max_pending:
            self._not_full.set()
        if not self._waiters:
            return
        lowest = min(target for target, _ in self._waiters)
        if any(e.seq <= lowest for e in self._entries()):
            return  # the most urgent flush still waits, so all do (usually found at once)
        oldest = self._oldest_seq()
        waiting: list[tuple[int, asyncio.Future[None]]] = []
        for target, future in self._waiters:
            if future.done():
                continue
            if target < oldest:
                future.set_result(None)
            else:
                waiting.append((target, future))
        self._waiters = waiting

    # -- internals: the flusher --------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self._interval
        while not self._stopping:
            deadline = next_tick
            if self._due:
                deadline = min(deadline, self._due[0][0])
            delay = deadline - loop.time()
            raise_if_cancelled()  # a cancellation a library swallowed (strata/tasks.py)
            if delay > 0 and not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            if self._stopping:
                break
            self._wake.clear()
            progressed = await self._drain()
            next_tick = loop.time() + self._interval
            if progressed and self._queued and self._urgent():
                self._wake.set()

    def _urgent(self) -> bool:
        return bool(
            self._waiters
            or self._queued >= self._threshold
            or self.pending >= self._max_pending
            or self._state is parts.State.CLOSING
        )

    async def _drain(self) -> bool:
        """Apply the retries that are due and the writes queued now; not those queued later,
        so that a steady stream of puts is gathered into batches rather than chased."""
        loop = asyncio.get_running_loop()
        budget = self._queued
        progressed = False
        while not self._stopping:
            batch = self._take_due(loop.time())
            if batch is None and budget > 0:
                batch = self._take_fresh(min(budget, self._max_batch))
                if batch is not None:
                    budget -= len(batch.entries)
            if batch is None:
                break
            await self._run_batch(batch)
            progressed = True
            self._settle()
        return progressed

    def _take_due(self, now: float) -> parts.Batch | None:
        while self._due and self._due[0][0] <= now:
            group = heappop(self._due)[2]
            if not group.entries:
                continue  # every write of it was superseded or cancelled
            for id_ in group.entries:
                del self._retrying[(group.schema, id_)]
            entries = list(group.entries.values())
            group.entries.clear()
            return parts.Batch(group.schema, entries, group.bisect)
        return None

    def _take_fresh(self, limit: int) -> parts.Batch | None:
        # Batches run one at a time, so no key is in flight here: a newer write of a key that
        # was in flight waited in the queue until that write was done, and only goes now.
        for schema, queue in self._queues.items():
            if len(queue) <= limit:
                taken = list(queue.values())
                queue.clear()
            else:
                ids = list(islice(queue, limit))
                taken = [queue.pop(id_) for id_ in ids]
            self._queued -= len(taken)
            # Round robin: this schema goes to the back of the line, or away if drained.
            del self._queues[schema]
            if queue:
                self._queues[schema] = queue
            return parts.Batch(schema, taken, bisect=False)
        return None

    async def _run_batch(self, batch: parts.Batch) -> None:
        schema = batch.schema
        for entry in batch.entries:
            self._in_flight[(schema, entry.write.id)] = entry
        error: BaseException | None = None
        try:
            await self._apply(schema, [entry.write for entry in batch.entries])
        except Exception as exc:
            error = exc
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # the flusher itself is being cancelled (close timed out)
            error = exc  # a cancellation from inside apply is just a failed batch
        try:
            if error is not None:
                # Still in flight (pending) until retried or dead-lettered with its hook run,
                # so a flush() cannot return in between.
                await self._failed(batch, error)
        finally:
            for entry in batch.entries:
                del self._in_flight[(schema, entry.write.id)]

    async def _failed(self, batch: parts.Batch, error: BaseException) -> None:
        schema = batch.schema
        queue = self._queues.get(schema)
        survivors: list[parts.Entry] = []
        for entry in batch.entries:
            entry.write.attempts += 1
            if entry.cancelled:
                continue
            newer = queue.get(entry.write.id) if queue is not None else None
            if newer is not None:
                # Never retried behind its successor: the newer write takes its place in line.
                newer.seq = min(newer.seq, entry.seq)
                newer.write.first_queued = min(newer.write.first_queued, entry.write.first_queued)
                continue
            survivors.append(entry)
        self._report(error)

        attempts = max((entry.write.attempts for entry in survivors), default=0)
        plan = parts.plan_failure(
            batch.bisect, len(survivors), attempts, self._max_retry, isinstance(error, UNREACHABLE)
        )
        parts.log_failure(
            self._log,
            plan,
            schema,
            len(batch.entries),
            len(survivors),
            attempts,
            error,
            max_retry=self._max_retry,
            bisect=batch.bisect,
        )
        if plan is parts.Plan.RETRY:
            self._regroup(schema, survivors, self.retry_delay(attempts), bisect=False)
        elif plan is parts.Plan.DEAD_LETTER:
            await self._dead_letter(survivors, error)
        elif plan is parts.Plan.BISECT:  # the whole batch keeps failing: find the refused writes
            half = len(survivors) // 2
            self._regroup(schema, survivors[:half], 0.0, bisect=True)
            self._regroup(schema, survivors[half:], 0.0, bisect=True)

    def _regroup(
        self, schema: str, entries: list[parts.Entry], delay: float, *, bisect: bool
    ) -> None:
        group = parts.Group(schema, {entry.write.id: entry for entry in entries}, bisect)
        for id_ in group.entries:
            self._retrying[(schema, id_)] = group
        due = asyncio.get_running_loop().time() + delay
        heappush(self._due, (due, next(self._tie), group))

    async def _dead_letter(self, entries: list[parts.Entry], error: BaseException) -> None:
        now = self._clock()
        letters = [DeadLetter(entry.write, error, now) for entry in entries]
        self._dead.extend(letters)
        await parts.call_hook(self._on_dead_letter, letters, self._log, self._report)

    async def _abandon(self, error: BaseException) -> list[DeadLetter]:
        """Dead-letter every write still here (the flusher is gone) and call the hook."""
        letters = self._bury(error)
        await parts.call_hook(self._on_dead_letter, letters, self._log, self._report)
        return letters

    def _bury(self, error: BaseException) -> list[DeadLetter]:
        entries = [
            *chain.from_iterable(q.values() for q in self._queues.values()),
            *(group.entries[id_] for (_, id_), group in self._retrying.items()),
            *(e for e in self._in_flight.values() if not e.cancelled),
        ]
        self._queues.clear()
        self._queued = 0
        self._retrying.clear()
        self._due.clear()
        self._in_flight.clear()
        now = self._clock()
        letters = [DeadLetter(entry.write, error, now) for entry in entries]
        self._dead.extend(letters)
        if letters:
            self._log.error(
                "write-behind: %d writes dead-lettered as the queue closed: %s", len(letters), error
            )
        self._settle()
        return letters

    def leftover(self) -> list[PendingWrite]:
        """Every write not yet applied (queued, retrying, in flight), oldest first: what a
        DataStore moves to a new queue when the event loop this one ran on has ended."""
        return [e.write for e in sorted(self._entries(), key=lambda e: e.seq)]

    def _flusher_done(self, task: asyncio.Task[None]) -> None:
        exc = parts.flusher_ended(task, self._stopping, self.pending, self._log)
        if exc is None:
            return
        if not task.cancelled():
            self._report(exc)
        self._crash = exc
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(
                    WriteBehindError("write-behind flusher has stopped", dead_letters=self._dead)
                )
        self._waiters = []
        self._not_full.set()  # waiting puts wake up to find the flusher gone

    def _report(self, exc: BaseException) -> None:
        try:
            if self._on_error is not None:
                self._on_error(exc)
        except Exception:
            self._log.exception("write-behind: on_error callback failed while reporting %r", exc)
