"""Shamir t-of-n secret sharing over the Mersenne prime field GF(2**521 - 1).

Secrets here are 256-bit values (a self-mask seed, an X25519 private key), far below the
prime, so one polynomial per secret suffices.  Coefficients come from :mod:`secrets`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

PRIME = 2**521 - 1
SHARE_BYTES = 66  # ceil(521 / 8)


def split(secret: int, *, threshold: int, points: Sequence[int]) -> dict[int, int]:
    """Shares of ``secret`` at the distinct non-zero ``points``; any ``threshold`` recover it."""
    if not 0 <= secret < PRIME:
        raise ValueError("The secret must lie in the field.")
    if threshold < 1 or threshold > len(points):
        raise ValueError("The threshold must be between 1 and the number of points.")
    if len(set(points)) != len(points) or any(not 0 < x < PRIME for x in points):
        raise ValueError("Evaluation points must be distinct and non-zero.")
    coeffs = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares: dict[int, int] = {}
    for x in points:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        shares[x] = acc
    return shares


def combine(shares: Mapping[int, int]) -> int:
    """The value at 0 of the polynomial through ``shares`` (Lagrange interpolation)."""
    if not shares:
        raise ValueError("No shares to combine.")
    xs = list(shares)
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("Share points must be distinct and non-zero.")
    secret = 0
    for xi, yi in shares.items():
        num, den = 1, 1
        for xj in xs:
            if xj != xi:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    return secret


def to_bytes(value: int) -> bytes:
    """Fixed-width big-endian encoding of a field element."""
    return value.to_bytes(SHARE_BYTES, "big")


def from_bytes(data: bytes) -> int:
    """Decode a field element; raise ``ValueError`` if malformed."""
    if len(data) != SHARE_BYTES:
        raise ValueError("A share must be exactly 66 bytes.")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ValueError("A share must be a field element.")
    return value
