"""``python -m ijtorch.cli``."""

import sys

from . import main

sys.exit(main())
