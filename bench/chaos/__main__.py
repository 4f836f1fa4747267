"""``python -m bench.chaos``: the chaos soak (see :mod:`bench.chaos.soak`)."""

import sys

from .soak import main

sys.exit(main())
