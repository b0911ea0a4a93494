"""``python -m segany`` runs the command line."""

import sys

from segany.cli import main

sys.exit(main())
