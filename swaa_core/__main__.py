"""``python -m swaa_core``: the same as the ``swaa`` command."""

import sys

from .cli import main

sys.exit(main())
