"""Signed model releases: weights in safetensors, a manifest signed with Ed25519.

A release is a directory of two files::

    model.safetensors   the model weights (safetensors, written by its numpy API)
    manifest.json       {"manifest": {...}, "signature": {...}}

The manifest says what the release is (run, rounds, participants, DP and secure-aggregation
parameters, ε spent, ...) and always carries ``model_digest`` (``sha256:<hex>`` of the bytes
of ``model.safetensors``) and ``format`` (``lepton-release/1``). The signature covers
:func:`canonical_json` of the manifest, so a verifier checks one signature and one digest
and knows both files are what the coordinator published::

    {"manifest": {...},
     "signature": {"algorithm": "ed25519",
                   "public_key_fingerprint": "sha256:<hex of the raw 32-byte public key>",
                   "value": "<base64 of the 64-byte signature>"}}

The coordinator creates releases (:func:`generate_signing_key`, :func:`write_release`);
a node verifies one with the coordinator's public key before using it
(:func:`verify_release`). Nodes get that public key out of band (with the CA certificate),
never from the release itself: a release names its signer's fingerprint only to make a
wrong-key error readable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from safetensors import SafetensorError
from safetensors.numpy import load as _safetensors_load
from safetensors.numpy import save as _safetensors_save

from lepton_fl.files import write_file

__all__ = [
    "MANIFEST_FILE",
    "MODEL_FILE",
    "RELEASE_FORMAT",
    "ReleaseError",
    "canonical_json",
    "generate_signing_key",
    "load_signing_key",
    "model_digest",
    "public_key_fingerprint",
    "public_key_pem",
    "safetensors_to_weights",
    "sign_manifest",
    "verify_release",
    "verify_signed_manifest",
    "weights_to_safetensors",
    "write_release",
]

MODEL_FILE: Final = "model.safetensors"
MANIFEST_FILE: Final = "manifest.json"
RELEASE_FORMAT: Final = "lepton-release/1"
SIGNATURE_ALGORITHM: Final = "ed25519"

_PRIVATE_MODE: Final = 0o600
_FILE_MODE: Final = 0o644
_DIRECTORY_MODE: Final = 0o700
_DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")
_SIGNATURE_BYTES: Final = 64
_VERIFY_HINT: Final = (
    "ask the coordinator's admin for the release again and compare the key fingerprint "
    "with the one you were given"
)


class ReleaseError(Exception):
    """A release or signing-key operation failed; ``str(error)`` says what to do.

    ``code`` is stable for programs: ``release-missing-file``, ``release-bad-signature``,
    ``release-digest-mismatch``, ``release-malformed-manifest``, ``release-unsigned``,
    ``release-unsupported-format``, ``release-malformed-weights``,
    ``release-invalid-weights``, ``release-directory-not-empty``, ``release-bad-public-key``,
    ``signing-key-exists``, ``signing-key-missing``, ``signing-key-malformed``.
    """

    def __init__(self, code: str, message: str) -> None:
        """Create an error with a machine-readable ``code`` and a human ``message``."""
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- keys


def generate_signing_key(path: Path) -> Ed25519PrivateKey:
    """Create a new Ed25519 release-signing key at ``path`` (PKCS#8 PEM, unencrypted, 0600).

    Missing parent directories are created with mode 0700. An existing file (or link) at
    ``path`` is never replaced: ``signing-key-exists``, since every node trusts the old key.
    """
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    path.parent.mkdir(mode=_DIRECTORY_MODE, parents=True, exist_ok=True)
    try:
        write_file(path, pem, mode=_PRIVATE_MODE)
    except FileExistsError as err:
        raise ReleaseError(
            "signing-key-exists",
            f"{path} already exists: refusing to replace a release-signing key (nodes trust "
            "its public key). Use load_signing_key to sign with it, or choose another path.",
        ) from err
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the Ed25519 release-signing key written by :func:`generate_signing_key`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise ReleaseError(
            "signing-key-missing",
            f"release-signing key {path} does not exist: create one with "
            "generate_signing_key, or give the path of the existing key",
        ) from err
    except IsADirectoryError as err:
        raise ReleaseError(
            "signing-key-missing",
            f"release-signing key {path} is a directory: give the path of the key file",
        ) from err
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as err:
        raise ReleaseError(
            "signing-key-malformed",
            f"release-signing key {path} is password-protected: store it unencrypted "
            "(PKCS#8 PEM) with mode 0600",
        ) from err
    except (ValueError, UnsupportedAlgorithm) as err:
        raise ReleaseError(
            "signing-key-malformed",
            f"{path} is not a PEM private key ({err}): give the file written by "
            "generate_signing_key",
        ) from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(
            "signing-key-malformed",
            f"{path} holds a {type(key).__name__.removeprefix('_')}, not an Ed25519 key: "
            "release-signing keys are Ed25519 (generate_signing_key)",
        )
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Return the public half of ``key`` as a SubjectPublicKeyInfo PEM string."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    ).decode("ascii")


def _load_public_key(pem: str) -> Ed25519PublicKey:
    """Parse an Ed25519 public key PEM, or raise ``release-bad-public-key``."""
    try:
        key = serialization.load_pem_public_key(pem.encode("utf-8"))
    except (ValueError, UnsupportedAlgorithm, AttributeError) as err:
        raise ReleaseError(
            "release-bad-public-key",
            "the release public key is not a PEM public key ('-----BEGIN PUBLIC KEY-----'): "
            "give the coordinator's release public key",
        ) from err
    if not isinstance(key, Ed25519PublicKey):
        raise ReleaseError(
            "release-bad-public-key",
            f"the release public key is a {type(key).__name__.removeprefix('_')}, not an "
            "Ed25519 key: give the coordinator's release public key",
        )
    return key


def _fingerprint(key: Ed25519PublicKey) -> str:
    """``sha256:`` + hex of the raw 32-byte public key."""
    raw = key.public_bytes(
        encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
    )
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def public_key_fingerprint(pem: str) -> str:
    """Return ``sha256:`` + hex of the raw 32-byte Ed25519 public key in ``pem``."""
    return _fingerprint(_load_public_key(pem))


# --------------------------------------------------------------------------- weights


def weights_to_safetensors(weights: Mapping[str, np.ndarray]) -> bytes:
    """Serialize named numpy arrays to safetensors bytes (bit-exact, little-endian).

    Refuses (``release-invalid-weights``) an empty mapping, a name that is not a non-empty
    string, a value that is not a numpy array, and dtypes safetensors cannot store.
    """
    if not isinstance(weights, Mapping) or not weights:
        raise ReleaseError(
            "release-invalid-weights",
            "weights must be a non-empty mapping of parameter name to numpy array",
        )
    tensors: dict[str, np.ndarray] = {}
    for name, array in weights.items():
        if not isinstance(name, str) or not name:
            raise ReleaseError(
                "release-invalid-weights",
                f"weight name {name!r} is not a non-empty string: name every array",
            )
        if not isinstance(array, np.ndarray):
            raise ReleaseError(
                "release-invalid-weights",
                f"weight {name!r} is a {type(array).__name__}, not a numpy array: convert it "
                "(e.g. tensor.detach().cpu().numpy())",
            )
        # safetensors stores little-endian, C-ordered data.
        tensors[name] = np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")
    try:
        return _safetensors_save(tensors)
    except (SafetensorError, ValueError, TypeError, KeyError) as err:
        dtypes = sorted({str(array.dtype) for array in tensors.values()})
        raise ReleaseError(
            "release-invalid-weights",
            f"the weights cannot be stored as safetensors ({err}; dtypes: {', '.join(dtypes)}): "
            "use numeric or boolean arrays",
        ) from err


def safetensors_to_weights(data: bytes) -> dict[str, np.ndarray]:
    """Parse safetensors bytes into named numpy arrays; ``release-malformed-weights`` if not."""
    try:
        return dict(_safetensors_load(bytes(data)))
    except (SafetensorError, ValueError, TypeError, KeyError) as err:
        raise ReleaseError(
            "release-malformed-weights",
            f"the weights are not a valid safetensors file ({err})",
        ) from err


def model_digest(data: bytes) -> str:
    """Return ``sha256:`` + the hex SHA-256 of ``data`` (the bytes of model.safetensors)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- manifests


def _check_json_value(value: object, where: str) -> None:
    """Refuse what has no single canonical JSON form: NaN/inf, non-string keys, objects."""
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ReleaseError(
                "release-malformed-manifest",
                f"manifest field {where} is {value!r}: JSON has no NaN or infinity, "
                "give a finite number or null",
            )
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ReleaseError(
                    "release-malformed-manifest",
                    f"manifest key {key!r} in {where} is not a string: use string keys",
                )
            _check_json_value(item, f"{where}.{key}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json_value(item, f"{where}[{index}]")
        return
    raise ReleaseError(
        "release-malformed-manifest",
        f"manifest field {where} is a {type(value).__name__}, which JSON cannot hold: "
        "use strings, numbers, booleans, null, lists and objects",
    )


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """Return the canonical bytes of ``obj``: sorted keys, no whitespace, UTF-8.

    Only JSON values are accepted (string keys, finite numbers): NaN, infinity and other
    objects raise ``release-malformed-manifest``.
    """
    if not isinstance(obj, Mapping):
        raise ReleaseError(
            "release-malformed-manifest",
            f"a manifest must be a JSON object, got {type(obj).__name__}",
        )
    _check_json_value(obj, "$")
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _require_digest(manifest: Mapping[str, Any]) -> str:
    """Return the manifest's ``model_digest``, or raise ``release-malformed-manifest``."""
    digest = manifest.get("model_digest")
    if not isinstance(digest, str) or _DIGEST_RE.fullmatch(digest) is None:
        raise ReleaseError(
            "release-malformed-manifest",
            f"the manifest's model_digest is {digest!r}: it must be 'sha256:' followed by 64 "
            "lower-case hex digits (model_digest(model_bytes))",
        )
    return digest


def sign_manifest(manifest: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Sign ``canonical_json(manifest)`` with ``key``; the manifest needs a ``model_digest``.

    Returns ``{"manifest": <a JSON copy of manifest>, "signature": {"algorithm": "ed25519",
    "public_key_fingerprint": ..., "value": <base64>}}``.
    """
    payload = canonical_json(manifest)
    _require_digest(manifest)
    signature = key.sign(payload)
    return {
        "manifest": json.loads(payload),
        "signature": {
            "algorithm": SIGNATURE_ALGORITHM,
            "public_key_fingerprint": _fingerprint(key.public_key()),
            "value": base64.b64encode(signature).decode("ascii"),
        },
    }


def _signature_parts(signed: Mapping[str, Any]) -> tuple[Mapping[str, Any], str, bytes]:
    """Split a signed manifest into (manifest, signer fingerprint, signature bytes)."""
    if not isinstance(signed, Mapping):
        raise ReleaseError(
            "release-malformed-manifest",
            f"a signed manifest must be a JSON object, got {type(signed).__name__}",
        )
    if "signature" not in signed:
        raise ReleaseError(
            "release-unsigned",
            "the release manifest has no signature: do not use this release; "
            "ask the coordinator's admin for a signed one",
        )
    manifest, signature = signed.get("manifest"), signed["signature"]
    if not isinstance(manifest, Mapping):
        raise ReleaseError(
            "release-malformed-manifest",
            "the signed manifest has no 'manifest' object: expected "
            '{"manifest": {...}, "signature": {...}}',
        )
    if not isinstance(signature, Mapping):
        raise ReleaseError(
            "release-unsigned",
            f"the release's signature is {signature!r}, not a signature object: do not use "
            "this release; ask the coordinator's admin for a signed one",
        )
    algorithm = signature.get("algorithm")
    if algorithm != SIGNATURE_ALGORITHM:
        raise ReleaseError(
            "release-malformed-manifest",
            f"the release is signed with algorithm {algorithm!r}; only "
            f"{SIGNATURE_ALGORITHM!r} is accepted",
        )
    fingerprint = signature.get("public_key_fingerprint")
    value = signature.get("value")
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if not isinstance(fingerprint, str) or len(raw) != _SIGNATURE_BYTES:
        raise ReleaseError(
            "release-malformed-manifest",
            "the release signature needs 'public_key_fingerprint' (a string) and 'value' "
            f"(base64 of {_SIGNATURE_BYTES} bytes): the manifest is damaged; {_VERIFY_HINT}",
        )
    return manifest, fingerprint, raw


def verify_signed_manifest(signed: Mapping[str, Any], public_key_pem: str) -> dict[str, Any]:
    """Return the manifest of ``signed`` if its signature verifies with ``public_key_pem``.

    Raises ``release-unsigned`` (no signature), ``release-bad-signature`` (signed by another
    key, naming both fingerprints; or the manifest was altered after signing),
    ``release-malformed-manifest`` or ``release-bad-public-key``.
    """
    public_key = _load_public_key(public_key_pem)
    manifest, signer, signature = _signature_parts(signed)
    trusted = _fingerprint(public_key)
    if signer != trusted:
        raise ReleaseError(
            "release-bad-signature",
            f"the release is signed by key {signer}, but the trusted release key is {trusted}: "
            f"do not use this release; {_VERIFY_HINT}",
        )
    payload = canonical_json(manifest)
    try:
        public_key.verify(signature, payload)
    except InvalidSignature as err:
        raise ReleaseError(
            "release-bad-signature",
            f"the release manifest does not match its signature by {trusted}: it was altered "
            f"after signing. Do not use this release; {_VERIFY_HINT}",
        ) from err
    result: dict[str, Any] = json.loads(payload)
    return result


# --------------------------------------------------------------------------- release directories


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory + rename."""
    write_file(path, data, mode=_FILE_MODE, replace=True)


def write_release(
    directory: Path,
    weights: Mapping[str, np.ndarray],
    manifest: Mapping[str, Any],
    key: Ed25519PrivateKey,
) -> dict[str, Any]:
    """Write a signed release into ``directory`` (created; must not hold anything yet).

    Writes ``model.safetensors``, sets ``model_digest`` (from those bytes) and ``format`` in a
    copy of ``manifest``, signs it, writes ``manifest.json`` atomically, and returns the
    signed manifest. Everything is checked before the first byte is written.
    """
    if directory.exists() or directory.is_symlink():
        if not directory.is_dir():
            raise ReleaseError(
                "release-directory-not-empty",
                f"{directory} exists and is not a directory: choose a new release directory",
            )
        if any(directory.iterdir()):
            raise ReleaseError(
                "release-directory-not-empty",
                f"release directory {directory} is not empty: a release is never overwritten; "
                "choose a new directory",
            )
    if not isinstance(manifest, Mapping):
        raise ReleaseError(
            "release-malformed-manifest",
            f"a manifest must be a JSON object, got {type(manifest).__name__}",
        )
    model_bytes = weights_to_safetensors(weights)
    full = {**manifest, "format": RELEASE_FORMAT, "model_digest": model_digest(model_bytes)}
    signed = sign_manifest(full, key)
    text = json.dumps(signed, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)

    directory.mkdir(parents=True, exist_ok=True)
    _write_atomic(directory / MODEL_FILE, model_bytes)
    _write_atomic(directory / MANIFEST_FILE, (text + "\n").encode("utf-8"))
    return signed


def _reject_constant(name: str) -> float:
    """``json.loads`` hook: refuse NaN and Infinity, which canonical JSON cannot hold."""
    raise ValueError(f"{name} is not valid JSON")


def _read_signed_manifest(path: Path) -> Any:
    """Read and parse ``manifest.json``, with errors naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ReleaseError(
            "release-missing-file",
            f"{path} is missing: a release needs {MANIFEST_FILE} beside {MODEL_FILE}; "
            "copy the whole release directory again",
        ) from err
    except UnicodeDecodeError as err:
        raise ReleaseError(
            "release-malformed-manifest",
            f"{path} is not UTF-8 text: the file is damaged; {_VERIFY_HINT}",
        ) from err
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as err:
        raise ReleaseError(
            "release-malformed-manifest",
            f"{path} is not valid JSON ({err}): the file is damaged; {_VERIFY_HINT}",
        ) from err


def _in_file(error: ReleaseError, path: Path) -> ReleaseError:
    """Return ``error`` with its message prefixed by the file it is about."""
    return ReleaseError(error.code, f"{path}: {error.message}")


def verify_release(
    directory: Path, public_key_pem: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Verify the release in ``directory`` with the trusted ``public_key_pem``.

    Checks the manifest's signature, its format, then that the SHA-256 of
    ``model.safetensors`` equals the signed ``model_digest``; returns (manifest, weights).
    Every failure is a :class:`ReleaseError` naming the file and what to do.
    """
    if not directory.is_dir():
        raise ReleaseError(
            "release-missing-file",
            f"release directory {directory} does not exist or is not a directory: "
            "give the directory that holds manifest.json and model.safetensors",
        )
    manifest_path = directory / MANIFEST_FILE
    signed = _read_signed_manifest(manifest_path)
    try:
        manifest = verify_signed_manifest(signed, public_key_pem)
        expected = _require_digest(manifest)
    except ReleaseError as err:
        if err.code == "release-bad-public-key":
            raise
        raise _in_file(err, manifest_path) from err
    if manifest.get("format") != RELEASE_FORMAT:
        raise ReleaseError(
            "release-unsupported-format",
            f"{manifest_path}: release format {manifest.get('format')!r} is not "
            f"{RELEASE_FORMAT!r}: upgrade lepton on this node, or ask for a "
            f"{RELEASE_FORMAT} release",
        )

    model_path = directory / MODEL_FILE
    try:
        model_bytes = model_path.read_bytes()
    except FileNotFoundError as err:
        raise ReleaseError(
            "release-missing-file",
            f"{model_path} is missing: a release needs {MODEL_FILE} beside {MANIFEST_FILE}; "
            "copy the whole release directory again",
        ) from err
    actual = model_digest(model_bytes)
    if actual != expected:
        raise ReleaseError(
            "release-digest-mismatch",
            f"{model_path} has digest {actual}, but the signed manifest says {expected}: the "
            "weights were altered or damaged after signing. Do not use them; copy the release "
            "again from the coordinator",
        )
    try:
        weights = safetensors_to_weights(model_bytes)
    except ReleaseError as err:
        raise _in_file(err, model_path) from err
    return manifest, weights
