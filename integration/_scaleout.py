"""Private scale-out servers for the integration tests: pgbouncer, Redis Sentinel, Redis Cluster.

Like ``integration._servers.PrivateRedis`` they run on free loopback ports, keep their files
in a temporary directory, never touch the shared servers, and are killed (and their
directory removed) by ``close()``. All start synchronously, so session-scoped fixtures can
own them::

    with PgBouncer(pg_host, pg_port) as bouncer:       # pool_mode = transaction
        url = bouncer.url("test")                       # postgresql://postgres@127.0.0.1:N/test

    with SentinelSet() as s:                            # master + replica + 3 sentinels
        s.url                                           # redis+sentinel://h:p,h:p,h:p/strata
        s.kill_master()                                 # SIGKILL; the sentinels fail over

    with RedisClusterSet() as c:                        # 3 masters + 3 replicas
        c.url                                           # redis+cluster://h:p,h:p,h:p
        c.kill(c.master_port_of_slot(slot))             # SIGKILL the master serving a slot
        c.failed_over(port)                             # a replica took over its slots
        c.restart(port)                                 # back, as a replica
"""

from __future__ import annotations

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

from integration._servers import LOOPBACK, free_port

__all__ = ["PgBouncer", "RedisClusterSet", "SentinelSet"]

SERVICE = "strata"  # the sentinel service (master) name


def _command(host: str, port: int, *args: str, timeout: float = 0.5) -> bytes:
    """One inline command to a Redis (or sentinel) and its raw reply; b"" when unreachable."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall((" ".join(args) + "\r\n").encode())
            data = b""
            sock.settimeout(timeout)
            while not data.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data
    except OSError:
        return b""


def _wait(what: str, condition: object, timeout: float, detail: object = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    extra = detail() if callable(detail) else ""
    raise RuntimeError(f"{what} did not happen within {timeout} s\n{extra}")


class _Proc:
    """One child server process with a log file; killed with SIGKILL."""

    def __init__(self, args: list[str], log: Path, *, user: str | None = None) -> None:
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.user = user

    def spawn(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class _Group:
    """Processes sharing one temporary directory; a context manager (sync)."""

    def __init__(self, prefix: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.procs: list[_Proc] = []

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _redis_args(port: int, workdir: Path, *extra: str) -> list[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found on PATH")
    workdir.mkdir(parents=True, exist_ok=True)
    return [
        exe,
        "--port",
        str(port),
        "--bind",
        LOOPBACK,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        *extra,
    ]


# --------------------------------------------------------------------------- pgbouncer


class PgBouncer(_Group):
    """A private pgbouncer in ``pool_mode`` (default transaction) in front of a trust-auth
    PostgreSQL at ``(pg_host, pg_port)``. ``url(db)`` is the client URL for database ``db``."""

    def __init__(
        self,
        pg_host: str,
        pg_port: int,
        *,
        user: str = "postgres",
        pool_mode: str = "transaction",
        pool_size: int = 5,
    ) -> None:
        super().__init__("strata-pgbouncer-")
        self.pg_host = pg_host
        self.pg_port = pg_port
        self.user = user
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.port = free_port()

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{LOOPBACK}:{self.port}/{database}"

    def start(self) -> None:
        exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not os.path.exists(exe):
            raise RuntimeError("pgbouncer is not installed (apt-get install -y pgbouncer)")
        (self.dir / "users.txt").write_text(f'"{self.user}" ""\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={self.pg_host} port={self.pg_port} user={self.user}\n"
            "[pgbouncer]\n"
            f"listen_addr = {LOOPBACK}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'users.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
            "max_client_conn = 500\n"
            f"default_pool_size = {self.pool_size}\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
        )
        args = [exe, str(ini)]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            shutil.chown(self.dir, "postgres")
            for f in self.dir.iterdir():
                shutil.chown(f, "postgres")
            args = [exe, "-u", "postgres", str(ini)]
        proc = _Proc(args, self.dir / "stderr.log")
        self.procs.append(proc)
        proc.spawn()
        log = self.dir / "pgbouncer.log"

        def listening() -> bool:
            if not proc.running:
                raise RuntimeError(f"pgbouncer exited:\n{proc.tail()}\n{_read(log)}")
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), 0.3):
                return True
            return False

        _wait("pgbouncer listening", listening, 10.0, lambda: _read(log))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


# --------------------------------------------------------------------------- Sentinel


class SentinelSet(_Group):
    """A master, one replica and three sentinels (quorum 2) monitoring service ``strata``.

    ``down_after_ms`` and ``failover_timeout_ms`` are small so a failover takes about a
    second. ``kill_master()`` SIGKILLs the current master; ``master()`` asks the sentinels.
    """

    def __init__(self, *, down_after_ms: int = 500, failover_timeout_ms: int = 2000) -> None:
        super().__init__("strata-sentinel-")
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.redis_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.by_port: dict[int, _Proc] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOOPBACK}:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def start(self) -> None:
        master, replica = self.redis_ports
        for port in (master, replica):
            extra = ("--replicaof", LOOPBACK, str(master)) if port == replica else ()
            args = _redis_args(port, self.dir / str(port), *extra)
            self._spawn(port, args)
        for port in (master, replica):
            _wait(f"redis {port}", lambda p=port: _command(LOOPBACK, p, "PING") == b"+PONG\r\n", 10)
        _wait("replica in sync", self._replica_synced, 10)
        for port in self.sentinel_ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind {LOOPBACK}\ndir {self.dir}\n"
                f"sentinel monitor {SERVICE} {LOOPBACK} {master} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            exe = shutil.which("redis-server") or "redis-server"
            self._spawn(port, [exe, str(conf), "--sentinel"])
        for port in self.sentinel_ports:
            _wait(f"sentinel {port}", lambda p=port: self._sentinel_knows(p), 10)

    def _spawn(self, port: int, args: list[str]) -> None:
        proc = _Proc(args, self.dir / f"{port}.log")
        self.procs.append(proc)
        self.by_port[port] = proc
        proc.spawn()

    def _replica_synced(self) -> bool:
        info = _command(LOOPBACK, self.redis_ports[1], "INFO", "replication", timeout=1.0)
        return b"master_link_status:up" in info

    def _sentinel_knows(self, port: int) -> bool:
        reply = _command(LOOPBACK, port, "SENTINEL", "REPLICAS", SERVICE)
        # Sentinel has discovered the replica and the other sentinels.
        info = _command(LOOPBACK, port, "SENTINEL", "MASTER", SERVICE)
        return b"slave" in reply and b"num-other-sentinels\r\n$1\r\n2" in info

    def master_port(self) -> int | None:
        for port in self.sentinel_ports:
            reply = _command(LOOPBACK, port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            parts = reply.split(b"\r\n")
            if len(parts) >= 5 and parts[4].isdigit():
                return int(parts[4])
        return None

    def kill_master(self) -> int:
        """SIGKILL the current master; its port."""
        port = self.master_port()
        if port is None:
            raise RuntimeError("the sentinels know no master")
        self.by_port[port].kill()
        return port

    def failed_over(self, old_port: int) -> bool:
        """Every sentinel names a master other than ``old_port`` and it answers as master."""
        ports = set()
        for port in self.sentinel_ports:
            reply = _command(LOOPBACK, port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            parts = reply.split(b"\r\n")
            if len(parts) < 5 or not parts[4].isdigit():
                return False
            ports.add(int(parts[4]))
        if len(ports) != 1 or old_port in ports:
            return False
        new = ports.pop()
        return b"role:master" in _command(LOOPBACK, new, "INFO", "replication", timeout=1.0)


# --------------------------------------------------------------------------- Cluster


class RedisClusterSet(_Group):
    """Three masters and three replicas (``redis-cli --cluster create --cluster-replicas 1``).

    ``cluster-node-timeout`` is small, so a replica takes over a killed master in about a
    second or two. ``kill(port)`` SIGKILLs a node (``master_port_of_slot(slot)``: the master
    serving a slot); ``healthy()`` is true when every slot is served (``cluster_state:ok``) on
    every live node, ``failed_over(port)`` once a replica took over the killed master's slots;
    ``restart(port)`` brings the node back as a replica.
    """

    def __init__(self, *, node_timeout_ms: int = 1000) -> None:
        super().__init__("strata-cluster-")
        self.node_timeout_ms = node_timeout_ms
        self.ports = [_cluster_port() for _ in range(6)]
        self.by_port: dict[int, _Proc] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{LOOPBACK}:{p}" for p in self.ports[:3])

    def start(self) -> None:
        for port in self.ports:
            args = _redis_args(
                port,
                self.dir / str(port),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.dir / str(port) / "nodes.conf"),
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--cluster-replica-validity-factor",
                "0",
            )
            proc = _Proc(args, self.dir / f"{port}.log")
            self.procs.append(proc)
            self.by_port[port] = proc
            proc.spawn()
        for port in self.ports:
            _wait(f"redis {port}", lambda p=port: _command(LOOPBACK, p, "PING") == b"+PONG\r\n", 10)
        cli = shutil.which("redis-cli") or "redis-cli"
        nodes = [f"{LOOPBACK}:{p}" for p in self.ports]
        done = subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout!r}{done.stderr!r}")
        _wait("cluster ok", self.healthy, 30, self._states)

    def _states(self) -> str:
        return "\n".join(
            f"{p}: {_command(LOOPBACK, p, 'CLUSTER', 'INFO')[:120]!r}" for p in self.ports
        )

    def live_ports(self) -> list[int]:
        return [p for p in self.ports if self.by_port[p].running]

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and agrees there are 3 reachable masters."""
        for port in self.live_ports():
            info = _command(LOOPBACK, port, "CLUSTER", "INFO", timeout=1.0)
            if b"cluster_state:ok" not in info:
                return False
            nodes = _bulk(LOOPBACK, port, "CLUSTER", "NODES")
            masters = [
                line
                for line in nodes.splitlines()
                if b"master" in line.split(b" ")[2] and b"fail" not in line.split(b" ")[2]
            ]
            if len([m for m in masters if len(m.split(b" ")) > 8]) != 3:
                return False
        return True

    def master_port_of_slot(self, slot: int) -> int:
        for port in self.live_ports():
            nodes = _bulk(LOOPBACK, port, "CLUSTER", "NODES")
            for line in nodes.splitlines():
                fields = line.decode().split(" ")
                flags = fields[2]
                if "master" not in flags or "fail" in flags:
                    continue
                for span in fields[8:]:
                    lo, _, hi = span.partition("-")
                    if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                        return int(fields[1].split("@")[0].rsplit(":", 1)[1])
        raise RuntimeError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        self.by_port[port].kill()

    def failed_over(self, port: int) -> bool:
        """The killed master ``port`` is marked failed by every live node, and ``healthy()``:
        a replica serves its slots (right after the kill ``healthy()`` alone still holds)."""
        for live in self.live_ports():
            for line in _bulk(LOOPBACK, live, "CLUSTER", "NODES").decode().splitlines():
                fields = line.split(" ")
                if fields[1].split("@")[0].endswith(f":{port}") and "fail" not in (
                    fields[2].split(",")
                ):
                    return False
        return self.healthy()

    def restart(self, port: int) -> None:
        """Start the killed node again (same files): it rejoins as a replica of the master
        that took over, so the next kill in this session fails over too. A node that runs
        is left as it is."""
        if self.by_port[port].running:
            return
        self.by_port[port].spawn()

        def rejoined() -> bool:
            nodes = _bulk(LOOPBACK, port, "CLUSTER", "NODES")
            mine = [line for line in nodes.splitlines() if b"myself" in line.split(b" ")[2]]
            return bool(mine) and b"slave" in mine[0].split(b" ")[2] and self.healthy()

        _wait(f"redis {port} rejoins as a replica", rejoined, 30, self._states)


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port + 10000))
            except OSError:
                continue
        return port


def _bulk(host: str, port: int, *args: str) -> bytes:
    """The body of a bulk-string reply (CLUSTER NODES), or b"" when unreachable."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall((" ".join(args) + "\r\n").encode())
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                head, _, rest = data.partition(b"\r\n")
                if head.startswith(b"$") and len(rest) >= int(head[1:]) + 2:
                    return rest[: int(head[1:])]
                if head.startswith(b"-"):
                    return b""
    except (OSError, ValueError):
        return b""
    return b""
