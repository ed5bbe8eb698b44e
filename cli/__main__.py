"""``python -m cli``: what the ``herd`` script runs (``herd serve`` starts its children so)."""

import sys

from cli.main import main

sys.exit(main())
