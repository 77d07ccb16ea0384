"""`python -m convattn` runs the command line."""

from convattn.cli import main

raise SystemExit(main())
