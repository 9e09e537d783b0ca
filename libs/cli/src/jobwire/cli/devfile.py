"""``.jobwire/dev.json``: what a running ``jobwire dev`` tells the other commands.

``jobwire dev`` writes it (mode 0600: it holds a development admin token) once
its servers and services are up: the admin API's URL, every service's URL
(``services``: name → URL), NATS, the namespace,
the database, the development SMTP sink (``smtp``: host:port, ``mail_dir``),
the token, and the PID of every process it started. The CLI run
inside the project reads it, so the commands ``make run`` prints work as
printed; variables and options still win over it. The next ``jobwire dev``
reads it to stop what a killed run left behind, by the recorded PIDs (each
checked against its recorded start time, never by name).

The file is found in ``$JOBWIRE_DEV_DIR``, else in the nearest ``.jobwire/``
from the current folder upwards. It counts only while the ``jobwire dev`` that
wrote it is alive: a stale file sends nobody anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobwire.runtime.embedded import pid_alive, process_start_time

FILE_NAME = "dev.json"
DEFAULT_DIR = ".jobwire"


@dataclass(frozen=True)
class Recorded:
    """A process ``jobwire dev`` started: its PID and when it started."""

    pid: int
    start: int | None

    @classmethod
    def of(cls, pid: int) -> Recorded:
        return cls(pid, process_start_time(pid))

    def alive(self) -> bool:
        """True while this very process runs (not another one with its PID)."""
        if not pid_alive(self.pid):
            return False
        return self.start is None or process_start_time(self.pid) == self.start


@dataclass
class DevFile:
    path: Path
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def owner(self) -> Recorded | None:
        pid = self.values.get("pid")
        if not isinstance(pid, int):
            return None
        start = self.values.get("start")
        return Recorded(pid, start if isinstance(start, int) else None)

    def running(self) -> bool:
        """True while the ``jobwire dev`` that wrote this file runs."""
        owner = self.owner
        return owner is not None and owner.alive()

    def processes(self) -> dict[str, Recorded]:
        found: dict[str, Recorded] = {}
        for name, entry in (self.values.get("processes") or {}).items():
            if isinstance(entry, dict) and isinstance(entry.get("pid"), int):
                start = entry.get("start")
                found[name] = Recorded(entry["pid"], start if isinstance(start, int) else None)
        return found

    def string(self, key: str) -> str | None:
        value = self.values.get(key)
        return value if isinstance(value, str) and value else None

    def service_url(self, name: str) -> str | None:
        """The HTTP URL of the service ``name`` (``services`` in the file)."""
        services = self.values.get("services")
        value = services.get(name) if isinstance(services, dict) else None
        return value if isinstance(value, str) and value else None

    def record(self, name: str, pid: int | None) -> None:
        if pid is not None:
            recorded = Recorded.of(pid)
            self.values.setdefault("processes", {})[name] = {
                "pid": recorded.pid,
                "start": recorded.start,
            }
            self.save()

    def save(self) -> None:
        """Write atomically, readable by its owner only (it holds a token)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            json.dump(self.values, out, indent=2)
            out.write("\n")
        os.chmod(partial, 0o600)  # an existing file keeps its mode through O_CREAT
        os.replace(partial, self.path)


def read(path: Path) -> DevFile:
    """The file at ``path``; empty when missing or unreadable (it is only a hint)."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        values = {}
    return DevFile(path, values if isinstance(values, dict) else {})


#: Names the folder of the dev file (else the nearest ``.jobwire/`` is looked for).
DIR_VARIABLE = "JOBWIRE_DEV_DIR"


def locate(environ: Mapping[str, str], cwd: Path | None = None) -> Path | None:
    """Where the dev file of this project is (it may not exist), or None."""
    if environ.get(DIR_VARIABLE):
        return Path(environ[DIR_VARIABLE]).expanduser().absolute() / FILE_NAME
    here = (cwd or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        candidate = folder / DEFAULT_DIR / FILE_NAME
        with contextlib.suppress(OSError):
            if candidate.is_file():
                return candidate
    return None


def running(environ: Mapping[str, str], cwd: Path | None = None) -> DevFile | None:
    """The dev file of a ``jobwire dev`` running for this project, else None."""
    path = locate(environ, cwd)
    if path is None:
        return None
    found = read(path)
    return found if found.running() else None
