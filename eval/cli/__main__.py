"""`python -m mfp.eval.cli ...` is `mfp ...`."""

import sys

from . import main

sys.exit(main())
