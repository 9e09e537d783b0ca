"""The mailer's domain is pure: importing it brings in no I/O library."""

from __future__ import annotations

import subprocess
import sys

# What would mean I/O sits in the domain. (`socket` is not listed: the standard
# library's email.utils imports it for make_msgid, which the domain does not call.)
IO_MODULES = (
    "asyncio",
    "aiosmtplib",
    "asyncpg",
    "nats",
    "jobwire.runtime",
    "jobwire.mailer.settings",
)


def test_importing_the_domain_imports_no_io_library_and_reads_no_file() -> None:
    probe = (
        "import sys, mimetypes\n"
        "import jobwire.mailer.domain.addresses, jobwire.mailer.domain.contacts\n"
        "import jobwire.mailer.domain.message\n"
        f"print(sorted(m for m in {IO_MODULES!r} if m in sys.modules), mimetypes.inited)\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )

    assert result.stdout.strip() == "[] False"
