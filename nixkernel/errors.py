"""nixkernel's error types: a failure a user can act on (what failed, where, how to fix it).

Standard library only: the launcher and every other module raise these. :mod:`nixkernel.nix`
re-exports them (``nix.NixKernelError``), where they were first defined.
"""

from __future__ import annotations


class NixKernelError(Exception):
    """An error a user can act on: what failed, where, and how to fix it."""

    cause = ""
    """What kind of failure it is, when Nix failed (see :mod:`nixkernel.nixerrors`)."""

    def __init__(self, message: str, hint: str = "", details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text += f"\n\nHow to fix it: {self.hint}"
        if self.details:
            text += f"\n\n{self.details}"
        return text


class NixNotFoundError(NixKernelError):
    pass


class NixEvaluationError(NixKernelError):
    pass


class NixTimeoutError(NixEvaluationError):
    """Nix did not finish in time (and was stopped): not a verdict on the Nix files."""
