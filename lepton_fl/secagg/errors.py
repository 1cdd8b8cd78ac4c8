"""Errors and rejection records of the secure-aggregation protocol."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorCode(StrEnum):
    """Machine-readable reason attached to every :class:`SecAggError` and rejection."""

    INVALID_CONFIG = "invalid_config"
    UNSAFE_THRESHOLD = "unsafe_threshold"
    RING_TOO_SMALL = "ring_too_small"
    TOO_FEW_PARTICIPANTS = "too_few_participants"
    TOO_FEW_HOLDERS = "too_few_holders"
    TOO_FEW_SURVIVORS = "too_few_survivors"
    DISCONNECTED_SURVIVORS = "disconnected_survivors"
    PARAMS_MISMATCH = "params_mismatch"
    BINDING_MISMATCH = "binding_mismatch"
    WRONG_RECIPIENT = "wrong_recipient"
    UNKNOWN_SENDER = "unknown_sender"
    DUPLICATE = "duplicate"
    MALFORMED = "malformed"
    BAD_KEY = "bad_key"
    SHARE_AUTH_FAILED = "share_auth_failed"
    UNMASK_BOTH = "unmask_both"
    RECONSTRUCTION_FAILED = "reconstruction_failed"
    NON_FINITE_INPUT = "non_finite_input"
    BAD_STATE = "bad_state"
    EXCLUDED = "excluded"
    NOT_A_MEMBER = "not_a_member"
    BAD_SIGNATURE = "bad_signature"
    ROUND_ALREADY_ANSWERED = "round_already_answered"
    NO_IDENTITY = "no_identity"
    NO_UNMASK = "no_unmask"
    ROUND_VOID = "round_void"


class SecAggError(Exception):
    """A protocol step was refused; ``code`` says why, ``message`` says it in a sentence."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"[{code.value}] {message}")
        self.code = code
        self.message = message


class RoundVoidedError(SecAggError):
    """A one-wave round (no dropout recovery) lost an active node's masked input: its masks
    cannot be removed, so nothing is aggregated. The session itself goes on without the
    nodes named in ``dropped``."""

    def __init__(self, message: str, *, dropped: tuple[int, ...]) -> None:
        super().__init__(ErrorCode.ROUND_VOID, message)
        self.dropped = dropped


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message the server refused; its sender was dropped from the round."""

    sender: int
    stage: str
    code: ErrorCode
    message: str
