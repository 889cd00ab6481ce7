"""Where a pool search's trials run (pool_search.py), and how their states read.

A Launcher starts a trial and reports its state; flows/search.py's starts flow runs of the
trial deployment on a Prefect work pool. Watch reads those states as the search needs them:
a server that does not answer reads RUNNING (ask again), and a flow run PENDING for
PENDING_TIMEOUT seconds, whose worker took it and died before starting it (so no heartbeat
for the crash automation to miss), is cancelled and reads CANCELLED: it runs again.
"""

from __future__ import annotations

import time
from typing import Protocol

WAITING = {"SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"}
LOST = {"CRASHED", "CANCELLED"}  # the worker died or someone stopped it: run it again
# A worker that took a trial (PENDING) starts it within seconds to a minute (a new process,
# its imports); one that died meanwhile never does.
PENDING_TIMEOUT = 600.0


class Launcher(Protocol):
    """Where trials run: flows/search.py's starts flow runs of the trial deployment."""

    def submit(self, spec: dict) -> str:
        """Start the trial `spec` (pool_trial.SPEC_KEYS); returns its handle (flow run id)."""

    def state(self, handle: str) -> tuple[str, str]:
        """(state type, message) of a started trial: Prefect's COMPLETED, FAILED, ..."""

    def cancel(self, handle: str) -> None:
        """Stop a trial that no one waits for any more."""


class Watch:
    """A launcher's trials' states, as the search reads them."""

    def __init__(self, launcher: Launcher, pending_timeout: float = PENDING_TIMEOUT):
        self.launcher, self.pending_timeout = launcher, pending_timeout
        self.pending_since: dict[str, float] = {}  # handle -> when first seen PENDING

    def state(self, handle: str) -> tuple[str, str]:
        """(kind, message); RUNNING while the server does not answer; CANCELLED (and
        cancelled) once PENDING for pending_timeout seconds."""
        try:
            kind, message = self.launcher.state(handle)
        except Exception as exc:
            print(f"[tune] cannot read flow run {handle} ({exc}): asking again")
            return "RUNNING", ""
        if kind != "PENDING":
            self.pending_since.pop(handle, None)
            return kind, message
        since = self.pending_since.setdefault(handle, time.monotonic())
        if time.monotonic() - since < self.pending_timeout:
            return kind, message
        self.launcher.cancel(handle)
        return "CANCELLED", (
            f"PENDING for {self.pending_timeout:.0f} s: its worker took it and never started it"
        )
