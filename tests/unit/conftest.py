"""What the unit tests share (pure code: no database, no network, no fixture of the root's)."""

from __future__ import annotations

from hypothesis import settings

NO_DEADLINE = settings(deadline=None)  # a loaded CI machine is not a failure
