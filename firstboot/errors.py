"""The agent's failures: each carries the reason and the next action an operator should take."""

from __future__ import annotations

RERUN = "fix the cause, then run `firstboot run` (or reboot); finished steps are not redone"


class StepFailed(Exception):
    def __init__(self, reason: str, next_action: str = RERUN) -> None:
        super().__init__(reason)
        self.reason = reason
        self.next_action = next_action


class Refused(StepFailed):
    """The bundle failed verification: nothing of it is applied."""


class FetchFailed(StepFailed):
    pass
