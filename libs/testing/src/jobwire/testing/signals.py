"""Children whose signal dispositions the test sets, not the test's parent.

A process inherits ignored signals: a test run from a script (a background
job of a non-interactive shell has SIGINT ignored) hands that to every child,
and a Python child then never turns SIGINT into ``KeyboardInterrupt``. A test
that signals a child must therefore say what the child starts with:
:func:`with_signals` wraps a command so that it starts with SIGINT and SIGTERM
at their defaults — or ignored, to reproduce how a script starts it.

The wrapper is a Python that sets the dispositions and ``exec``\\s the command
(same PID, so signals and ``wait`` reach the command itself); unlike a
``preexec_fn`` it is safe in a test process that has threads.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterable, Sequence

__all__ = ["with_signals"]

_EXEC = (
    "import os, signal, sys\n"
    "for item in filter(None, sys.argv[1].split(',')):\n"
    "    name, _, how = item.partition('=')\n"
    "    signal.signal(getattr(signal, name), getattr(signal, how))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def with_signals(
    command: Sequence[str],
    *,
    ignored: Iterable[signal.Signals] = (),
    default: Iterable[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
) -> list[str]:
    """``command`` started with ``default`` signals at SIG_DFL and ``ignored`` at SIG_IGN."""
    skip = set(ignored)
    spec = [f"{s.name}=SIG_DFL" for s in default if s not in skip]
    spec += [f"{s.name}=SIG_IGN" for s in skip]
    return [sys.executable, "-c", _EXEC, ",".join(spec), *command]
