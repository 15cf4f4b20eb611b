"""``python -m attractorlab`` is the ``attractorlab`` command."""

import sys

from attractorlab.cli import main

sys.exit(main())
