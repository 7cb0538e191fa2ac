"""Allow ``python -m geodns``."""

from geodns.control.cli import main

raise SystemExit(main())
