"""Child processes for the integration tests, and the parent-side helpers that drive them.

``Peer`` runs ``integration.procs.peer`` (one DataStore in its own process) and talks to it
one JSON line at a time; ``eventually`` waits for a condition with a generous deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["Peer", "PeerError", "eventually"]

REPO = Path(__file__).resolve().parents[2]
REPLY_TIMEOUT = 30.0  # generous: a peer that says nothing for this long is stuck


async def eventually(
    condition: Callable[[], Any | Awaitable[Any]], *, timeout: float = 5.0, interval: float = 0.02
) -> Any:
    """Call ``condition`` (sync or async) until it returns something truthy; return that.
    Raises AssertionError after ``timeout`` seconds: the behaviour never happened."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"condition still false after {timeout} s: {condition}")
        await asyncio.sleep(interval)


class PeerError(Exception):
    """An operation in the peer raised ``error`` (the Strata exception's class name)."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error


class Peer:
    """A DataStore in a child process (``integration/procs/peer.py``).

    ``async with Peer(settings) as b:`` starts it and waits until it is connected; leaving
    closes its DataStore and waits for the process to end (killed if it does not).
    ``settings`` are ``Config`` fields; ``module`` declares the ``ITEMS`` schema it registers."""

    def __init__(self, settings: dict[str, Any], module: str = "integration.procs.models") -> None:
        self.settings = settings
        self.module = module  # where the peer's ITEMS schema (and model) is declared
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __aexit__

    async def __aenter__(self) -> Self:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "integration.procs.peer",
            json.dumps(self.settings),
            self.module,
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
        )
        try:
            await self._read()
        except BaseException:
            await self._kill()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc = self._proc
        try:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(Exception):
                    await self._send({"op": "quit"})
                    await self._read()
                    await asyncio.wait_for(proc.wait(), REPLY_TIMEOUT)
        finally:
            await self._kill()
            self._stderr.close()

    async def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
            with contextlib.suppress(Exception):
                await proc.stdin.wait_closed()

    def stderr_tail(self, chars: int = 3000) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-chars:]

    async def _send(self, command: dict[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self._proc.stdin.drain()

    async def _read(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), REPLY_TIMEOUT)
        except TimeoutError:
            raise AssertionError(
                f"peer did not answer; its stderr:\n{self.stderr_tail()}"
            ) from None
        if not line:
            await self._proc.wait()
            raise AssertionError(
                f"peer exited ({self._proc.returncode}); its stderr:\n{self.stderr_tail()}"
            )
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def call(self, op: str, **args: Any) -> Any:
        """Run one DataStore operation in the peer; its Strata error comes back as PeerError."""
        await self._send({"op": op, **args})
        reply = await self._read()
        if not reply["ok"]:
            raise PeerError(reply["error"], reply["message"])
        return reply["value"]

    async def get(self, id: str) -> dict[str, Any]:
        value: dict[str, Any] = await self.call("get", id=id)
        return value

    async def stats(self) -> dict[str, int]:
        value: dict[str, int] = await self.call("stats")
        return value
