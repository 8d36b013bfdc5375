"""``python -m balancedness.demo``: see :mod:`balancedness.demo`."""

import sys

from balancedness.demo import main

sys.exit(main())
