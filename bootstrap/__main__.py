"""`python -m bootstrap run ...`, the same as `dasgd-bootstrap run ...`."""

import sys

from bootstrap.cli import main

sys.exit(main())
