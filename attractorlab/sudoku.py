"""``attractorlab.sudoku`` is :mod:`attractorlab.tasks.sudoku` (the Sudoku task); this name stays importable."""

import sys

from attractorlab.tasks import sudoku as _sudoku

sys.modules[__name__] = _sudoku
