"""``python -m caseapp``: see :mod:`caseapp.cli`."""

from caseapp.cli import main

raise SystemExit(main())
