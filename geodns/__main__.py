"""Allow ``python -m geodns``."""

from geodns.cli import main

raise SystemExit(main())
