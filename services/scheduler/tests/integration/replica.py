"""One scheduler replica as its own process, for the reliability tests.

Run as ``python replica.py`` with ``JOBWIRE_*`` variables set (database,
NATS URL, namespace, ...). It registers the ``test-work`` job type exactly as
the tests' conftest does, then serves the real scheduler service: the same
entry point, signal handling and shutdown as in production, so that SIGKILL
by PID is a real crash of a real replica.
"""

from __future__ import annotations

import sys

from jobwire.contracts.job_types import JobParams, job_params, job_types
from jobwire.runtime.service import serve
from jobwire.scheduler.main import spec

if "test-work" not in job_types():

    @job_params("test-work")
    class TestWorkParams(JobParams):
        seconds: float = 0.0


if __name__ == "__main__":
    sys.exit(serve(spec))
