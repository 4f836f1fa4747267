"""``python -m conveyor.testing.simulator``: serve the simulator until SIGTERM/SIGINT."""

import sys

from .cli import main

sys.exit(main())
