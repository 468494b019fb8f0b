"""`python -m ditkit` runs the command-line interface."""

import sys

from ditkit.cli.main import main

sys.exit(main())
