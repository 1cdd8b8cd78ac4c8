"""Key agreement, key derivation, authenticated encryption and the mask generator.

* X25519 for both key pairs (c: share encryption, s: pairwise masks).
* HKDF-SHA256 turns a shared secret into a 32-byte key bound to a context string.
* AES-256-GCM (random 96-bit nonce) encrypts shares; associated data binds run, round,
  sender and recipient.
* The mask generator is AES-256-CTR keyed by a 32-byte seed: its keystream read as
  little-endian unsigned words is uniform over the words, and the low ``modulus_bits`` bits
  of a uniform word are exactly uniform over Z_(2**modulus_bits).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

from lepton_fl.secagg.errors import ErrorCode, SecAggError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_ZERO_IV = bytes(16)


def generate_key_pair() -> tuple[X25519PrivateKey, bytes]:
    """A fresh X25519 private key and its raw 32-byte public key."""
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes_raw()


def private_key_from_bytes(data: bytes) -> X25519PrivateKey:
    """Load a raw 32-byte X25519 private key."""
    return X25519PrivateKey.from_private_bytes(data)


def public_key_of(private: bytes) -> bytes:
    """The raw public key of a raw private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """The X25519 shared secret; refuse malformed or low-order peer keys."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise SecAggError(
            ErrorCode.BAD_KEY, "A peer public key is malformed or of low order."
        ) from exc


def is_valid_public_key(public: bytes) -> bool:
    """Whether ``public`` is a usable X25519 key: 32 bytes and not of low order."""
    if len(public) != KEY_BYTES:
        return False
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return False
    return True


def derive_key(secret: bytes, *, info: bytes) -> bytes:
    """HKDF-SHA256 of ``secret`` to a 32-byte key bound to ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def seal(key: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
    """AES-256-GCM encryption; returns nonce || ciphertext || tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, *, aad: bytes) -> bytes:
    """Decrypt and authenticate :func:`seal` output; raise SecAggError if it was altered."""
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise SecAggError(ErrorCode.SHARE_AUTH_FAILED, "An encrypted share is truncated.")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise SecAggError(
            ErrorCode.SHARE_AUTH_FAILED, "An encrypted share failed authentication."
        ) from exc


def commit(data: bytes, *, info: bytes) -> bytes:
    """A SHA-256 commitment to a high-entropy secret, bound to ``info``."""
    return hashlib.sha256(b"lepton-secagg/v1/commit" + info + data).digest()


def ring_dtype(modulus_bits: int) -> np.dtype[Any]:
    """The unsigned word type that holds elements of Z_(2**modulus_bits)."""
    return np.dtype("<u4") if modulus_bits <= 32 else np.dtype("<u8")


def expand_mask(seed: bytes, *, length: int, modulus_bits: int) -> NDArray[Any]:
    """``length`` uniform words from the AES-256-CTR keystream of ``seed``.

    The words are uniform over the word type; callers reduce mod 2**modulus_bits (a bit
    mask) once after all additions, which keeps every element exactly uniform.
    """
    if len(seed) != KEY_BYTES:
        raise ValueError("A mask seed must be 32 bytes.")
    dtype = ring_dtype(modulus_bits)
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor()
    nbytes = length * dtype.itemsize
    out = bytearray(nbytes + 15)  # update_into wants block_size - 1 bytes of slack
    encryptor.update_into(bytes(nbytes), out)
    return np.frombuffer(out, dtype=dtype, count=length)
