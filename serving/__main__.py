"""`python -m propensity.serving [--host H] [--port P] [--workers N]`: the scorer."""

import sys

from propensity.serving.server import main

sys.exit(main())
