"""`python -m agent` is `sipstatus-agent`."""

from .cli import main

raise SystemExit(main())
