"""Private servers and a fault-injecting TCP proxy for fault tests.

Fault tests never stop, flush or reconfigure the shared servers. Instead they use:

- ``PrivateRedis``: a throwaway ``redis-server`` on a free loopback port, with its own
  temporary directory, that the test may kill (``stop()``) and bring back on the same port
  (``start()``)::

      async with PrivateRedis() as server:
          client = redis.asyncio.Redis.from_url(server.url)
          ...
          await server.stop()   # SIGKILL: the server is gone, connections drop
          await server.start()  # same port, empty data

- ``FaultProxy``: an asyncio TCP proxy on a free loopback port in front of a real server
  (the shared PostgreSQL/Redis or a PrivateRedis)::

      async with FaultProxy("127.0.0.1", 6379) as proxy:
          client = redis.asyncio.Redis(host=proxy.host, port=proxy.port)
          await proxy.cut()          # drop every connection, refuse new ones
          await proxy.restore()      # back to normal forwarding
          proxy.delay(0.5)           # responses held 0.5 s each
          proxy.blackhole()          # accept, never forward (until restore())

Both work within one event loop (pytest-asyncio gives each test its own), so create them
inside the test or in a function-scoped async fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

__all__ = ["FaultProxy", "PrivateRedis", "free_port"]

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def _close_writer(writer: asyncio.StreamWriter, *, abort: bool = False) -> None:
    transport = writer.transport
    if abort:
        transport.abort()
    else:
        writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


# ----------------------------------------------------------------------- PrivateRedis


class PrivateRedis:
    """A private ``redis-server`` on ``127.0.0.1:<port>`` that keeps nothing on disk.

    ``await start()`` spawns it and waits until it answers ``PING``; ``await stop()``
    kills it (SIGKILL, like a crash) and waits for the process; ``start()`` again reuses
    the same port. Used as an (async) context manager it starts on entry and, on exit,
    kills the server and removes its temporary directory. ``close()`` does the same
    synchronously and is safe to call more than once.
    """

    host = LOOPBACK

    def __init__(
        self,
        port: int | None = None,
        *,
        executable: str = "redis-server",
        extra_args: tuple[str, ...] = (),
        startup_timeout: float = 10.0,
    ) -> None:
        self._fixed_port = port is not None
        self.port: int = port if port is not None else free_port()
        self.executable = executable
        self.extra_args = extra_args
        self.startup_timeout = startup_timeout
        self._tmpdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    # -- properties

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def logfile(self) -> Path | None:
        return self._tmpdir / "redis.log" if self._tmpdir else None

    # -- lifecycle

    def _spawn(self) -> None:
        exe = shutil.which(self.executable)
        if exe is None:
            raise RuntimeError(f"{self.executable!r} not found on PATH")
        if self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="strata-redis-"))
        args = [
            exe,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self._tmpdir),
            "--logfile",
            str(self._tmpdir / "redis.log"),
            *self.extra_args,
        ]
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C aimed at pytest does not hit it first
        )

    def _log_tail(self, lines: int = 15) -> str:
        log = self.logfile
        try:
            text = log.read_text(errors="replace") if log else ""
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _died(self) -> bool:
        return self._proc is not None and self._proc.poll() is not None

    @staticmethod
    def _ping_sync(host: str, port: int) -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    @staticmethod
    async def _ping(host: str, port: int) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 0.5)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"PING\r\n")
            line = await asyncio.wait_for(reader.readline(), 0.5)
            return line.startswith(b"+PONG")
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return False
        finally:
            await _close_writer(writer)

    def _startup_failed(self) -> RuntimeError:
        code = self._proc.returncode if self._proc else None
        return RuntimeError(
            f"private redis-server on port {self.port} did not come up (exit code {code}); "
            f"log:\n{self._log_tail()}"
        )

    def _port_conflict(self) -> bool:
        return self._died() and "Address already in use" in self._log_tail()

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None

    async def start(self) -> None:
        """Spawn the server (same port as before on a restart) and wait for PING."""
        if self.running:
            return
        for attempt in range(3):
            self._spawn()
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline:
                if self._died():
                    break
                if await self._ping(self.host, self.port):
                    self._started_once = True
                    return
                await asyncio.sleep(0.05)
            # Our first start on a port we picked ourselves: someone may have taken it.
            retry = not self._fixed_port and not self._started_once and attempt < 2
            if retry and self._port_conflict():
                self._reap()
                self.port = free_port()
                continue
            error = self._startup_failed()
            self._kill()
            raise error
        raise self._startup_failed()  # pragma: no cover

    def start_sync(self) -> None:
        """``start()`` for sync code (e.g. a session-scoped sync fixture)."""
        if self.running:
            return
        self._spawn()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline and not self._died():
            if self._ping_sync(self.host, self.port):
                self._started_once = True
                return
            time.sleep(0.05)
        error = self._startup_failed()
        self._kill()
        raise error

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        self._proc = None

    async def stop(self) -> None:
        """Kill the server (SIGKILL, no shutdown) and wait until it is gone."""
        self._kill()

    def stop_sync(self) -> None:
        self._kill()

    def close(self) -> None:
        """Kill the server if running and remove its temporary directory."""
        self._kill()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __enter__(self) -> Self:
        try:
            self.start_sync()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PrivateRedis {self.url} {state}>"


# ------------------------------------------------------------------------- FaultProxy


class FaultProxy:
    """A TCP proxy on a free loopback port in front of ``(target_host, target_port)``.

    Modes (all take effect at once, for current and new connections):

    - normal: bytes are forwarded both ways.
    - ``await cut()``: every current connection is dropped (both sides aborted) and the
      listening socket is closed, so new connections are refused (ECONNREFUSED) - like
      the server's host going away. ``await restore()`` listens again on the same port.
    - ``delay(seconds)``: each chunk coming back from the target is held ``seconds``
      before it is passed on, so every request/response round trip takes about
      ``seconds`` longer. ``delay(0)`` clears it.
    - ``blackhole()``: connections are still accepted, but nothing is forwarded in
      either direction (data is held, not dropped; new connections do not reach the
      target yet) - like a network partition. ``restore()`` lets it all flow again.

    ``await restore()`` returns to normal: listening, no delay, no blackhole.
    ``await close()`` (or leaving ``async with``) stops listening and closes everything.
    ``connections`` is the number of client connections currently open.
    """

    host = LOOPBACK

    def __init__(self, target_host: str, target_port: int, *, port: int | None = None) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port: int = port if port is not None else 0
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._accepted: set[socket.socket] = set()  # accepted, not yet owned by a transport
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._delay = 0.0
        self._cut = False
        self._closed = False

    @classmethod
    def for_url(cls, url: str) -> FaultProxy:
        """A proxy in front of the host:port of a ``redis://`` or ``postgresql://`` URL."""
        parts = urlsplit(url)
        default = 5432 if parts.scheme.startswith("postgres") else 6379
        return cls(parts.hostname or LOOPBACK, parts.port or default)

    def url_for(self, url: str) -> str:
        """``url`` with its host:port replaced by this proxy's (user, password, path kept)."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}{self.host}:{self.port}"))

    @property
    def connections(self) -> int:
        """Client connections currently open through the proxy."""
        return len(self._handlers)

    @property
    def is_cut(self) -> bool:
        return self._cut

    # -- lifecycle

    async def _listen(self) -> None:
        sock = socket.create_server((self.host, self.port))  # SO_REUSEADDR on POSIX
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._accept_task = asyncio.create_task(self._accept_loop(sock))

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _addr = await loop.sock_accept(listener)
            if self._cut or self._closed:
                conn.close()
                continue
            # Owned from the first moment, so close()/cut() can always release it.
            self._accepted.add(conn)
            task = loop.create_task(self._handle(conn))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _stop_listening(self) -> None:
        task, self._accept_task = self._accept_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()  # connections still in the backlog are reset

    async def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.gather(*handlers, return_exceptions=True)
        for conn in list(self._accepted):  # handlers cancelled before they wrapped them
            conn.close()
        self._accepted.clear()

    async def start(self) -> None:
        if self._listener is None and not self._closed and not self._cut:
            await self._listen()

    async def close(self) -> None:
        """Stop listening and close every connection (idempotent)."""
        self._closed = True
        await self._stop_listening()
        await self._drop_all()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- controls

    async def cut(self) -> None:
        """Drop all current connections and refuse new ones until ``restore()``."""
        self._cut = True
        await self._stop_listening()
        await self._drop_all()

    async def restore(self) -> None:
        """Back to normal: listen again (same port), no delay, no blackhole."""
        self._delay = 0.0
        self._flowing.set()
        if self._cut:
            self._cut = False
            if not self._closed:
                await self._listen()

    def delay(self, seconds: float) -> None:
        """Hold each chunk coming back from the target ``seconds`` (0 clears)."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._delay = seconds

    def blackhole(self) -> None:
        """Accept connections but forward nothing, either way, until ``restore()``."""
        self._flowing.clear()

    # -- forwarding

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, responses: bool
    ) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            await self._flowing.wait()
            if responses and self._delay > 0:
                await asyncio.sleep(self._delay)
                await self._flowing.wait()
            writer.write(data)
            await writer.drain()

    async def _handle(self, conn: socket.socket) -> None:
        client: asyncio.StreamWriter | None = None
        upstream: asyncio.StreamWriter | None = None
        try:
            client_reader, client = await asyncio.open_connection(sock=conn)
            self._accepted.discard(conn)
            self._writers.add(client)
            await self._flowing.wait()  # blackhole: accepted, but the target is not reached
            up_reader, upstream = await asyncio.open_connection(self.target_host, self.target_port)
            self._writers.add(upstream)
            pumps = [
                asyncio.ensure_future(self._pump(client_reader, upstream, responses=False)),
                asyncio.ensure_future(self._pump(up_reader, client, responses=True)),
            ]
            try:
                # Either side closing (or failing) ends the connection.
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except Exception:
            pass  # target down, connection reset, ...: the client just sees it closed
        finally:
            for writer in (upstream, client):
                if writer is not None:
                    self._writers.discard(writer)
                    await _close_writer(writer)

    def __repr__(self) -> str:
        mode = "cut" if self._cut else "blackhole" if not self._flowing.is_set() else "normal"
        return (
            f"<FaultProxy {self.host}:{self.port} -> {self.target_host}:{self.target_port} "
            f"{mode} delay={self._delay}>"
        )
