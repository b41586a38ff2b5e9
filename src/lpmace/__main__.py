"""`python -m lpmace ...` (also what `torchrun -m lpmace` runs)."""

import sys

from lpmace.cli import main

sys.exit(main())
