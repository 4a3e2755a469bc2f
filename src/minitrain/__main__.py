"""``python -m minitrain``: the ``minitrain`` command."""

import sys

from minitrain.cli import main

sys.exit(main())
