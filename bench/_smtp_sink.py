"""An SMTP sink for the mailer benchmark: accepts every message, keeps none, counts them.

Not aiosmtpd: aiosmtpd reads DATA line by line in Python, which on two cores
costs about as much CPU per message as the client sending it, so the sink
rather than the client would set the pace of the bare loop the mailer is
measured against. This sink speaks the little of ESMTP a client needs (EHLO
with SIZE, 8BITMIME, SMTPUTF8 and PIPELINING; MAIL, RCPT, DATA, RSET, NOOP,
QUIT), finds the end of DATA with ``bytes.find`` and throws the data away.

It runs in a process of its own (``python bench/_smtp_sink.py --port P
--stats FILE``); SIGUSR1 makes it write ``{"messages", "bytes", "connections"}``
to the stats file (atomically), SIGTERM stops it. :class:`SmtpSink` starts it,
reads its counts and stops it by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobwire.runtime.embedded import LOOPBACK, child_options, free_port, is_listening, terminate

SIZE_LIMIT = 50 * 1024 * 1024
EHLO = (
    b"250-sink.localhost\r\n250-SIZE %d\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    b"250-PIPELINING\r\n250 HELP\r\n" % SIZE_LIMIT
)
END_OF_DATA = b"\r\n.\r\n"


class Counts:
    messages = 0
    bytes = 0
    connections = 0


class SinkProtocol(asyncio.Protocol):
    """One client connection: commands line by line, DATA scanned for its end in one go."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.buffer = bytearray()
        self.in_data = False
        self.scanned = 0  # bytes of the DATA already searched for its end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.counts.connections += 1
        transport.write(b"220 sink.localhost ESMTP bench sink\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies: list[bytes] = []
        while True:
            if self.in_data:
                # The end may straddle two reads: search again from just before the old end.
                end = self.buffer.find(END_OF_DATA, max(0, self.scanned - 4))
                if end < 0:
                    self.scanned = len(self.buffer)
                    break
                self.counts.messages += 1
                self.counts.bytes += end  # the message with its last CRLF, after our prefix
                del self.buffer[: end + len(END_OF_DATA)]
                self.in_data, self.scanned = False, 0
                replies.append(b"250 2.0.0 OK: discarded\r\n")
                continue
            newline = self.buffer.find(b"\r\n")
            if newline < 0:
                break
            line = bytes(self.buffer[:newline])
            del self.buffer[: newline + 2]
            verb = line[:4].upper()
            if verb == b"DATA":
                # The data may begin with its first line: "\r\n.\r\n" then also
                # matches an empty message right after the 354.
                self.buffer[0:0] = b"\r\n"
                self.in_data = True
                replies.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb in (b"EHLO", b"HELO"):
                replies.append(EHLO if verb == b"EHLO" else b"250 sink.localhost\r\n")
            elif verb == b"QUIT":
                replies.append(b"221 2.0.0 Bye\r\n")
                self.transport.write(b"".join(replies))
                self.transport.close()
                return
            else:  # MAIL, RCPT, RSET, NOOP and anything else: fine
                replies.append(b"250 2.0.0 OK\r\n")
        if replies:
            self.transport.write(b"".join(replies))


def _write_stats(path: Path, counts: Counts) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(
        json.dumps(
            {"messages": counts.messages, "bytes": counts.bytes, "connections": counts.connections}
        )
    )
    partial.replace(path)


async def serve(port: int, stats: Path) -> None:
    loop = asyncio.get_running_loop()
    counts = Counts()
    server = await loop.create_server(lambda: SinkProtocol(counts), LOOPBACK, port, backlog=128)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, _write_stats, stats, counts)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


class SmtpSink:
    """The sink in its own process, on a free port; stopped by PID."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.stats_path = directory / "sink-stats.json"
        self.log_path = directory / "sink.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, __file__, "--port", str(self.port), "--stats", self.stats_path],
                stdout=log,
                stderr=log,
                **child_options(),
            )
        deadline = time.monotonic() + 20
        while not is_listening(LOOPBACK, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the SMTP sink did not start; see {self.log_path}")
            time.sleep(0.05)

    def counts(self) -> dict[str, int]:
        """What the sink has accepted so far."""
        assert self.process is not None
        self.stats_path.unlink(missing_ok=True)
        os.kill(self.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not self.stats_path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the SMTP sink wrote no counts")
            time.sleep(0.01)
        counts: dict[str, int] = json.loads(self.stats_path.read_text())
        return counts

    def stop(self) -> None:
        terminate(self.process, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.stats))


if __name__ == "__main__":
    main()
