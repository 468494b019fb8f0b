"""`python -m ditkit` runs the command-line interface."""

import sys

from ditkit.cli import main

sys.exit(main())
