"""`python -m peftkit` and `accelerate launch -m peftkit ...`."""

import sys

from peftkit.cli import main

sys.exit(main())
