"""What every fuzz entry does when run as a program: hand its TestOneInput to atheris.

Imported only then, so the entries stay importable (and runnable under hypothesis) without atheris.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    atheris = importlib.import_module("atheris")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
