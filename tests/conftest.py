"""Hypothesis profiles. `make test` (and so CI) uses "repeatable": derandomized, so every run tries the
same examples and a landing is never refused by a chance find on a fresh machine. Plain `pytest` keeps
exploring with fresh examples each run; what it finds is saved in .hypothesis/ and belongs in an
`@example` next to the property."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("repeatable", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
