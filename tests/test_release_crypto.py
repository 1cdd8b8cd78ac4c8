"""Signed model releases: keys, safetensors weights, canonical JSON, signatures, directories."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lepton_fl.crypto.release import (
    MANIFEST_FILE,
    MODEL_FILE,
    RELEASE_FORMAT,
    ReleaseError,
    canonical_json,
    generate_signing_key,
    load_signing_key,
    model_digest,
    public_key_fingerprint,
    public_key_pem,
    safetensors_to_weights,
    sign_manifest,
    verify_release,
    verify_signed_manifest,
    weights_to_safetensors,
    write_release,
)


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "layer1.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "layer1.bias": np.zeros(4, dtype=np.float32),
        "steps": np.array(12, dtype=np.int64),
    }


def _manifest() -> dict[str, Any]:
    return {
        "run": "heart-disease-2026-11-24",
        "rounds": 5,
        "participants": ["cleveland", "hungary", "va"],
        "dp": {"epsilon": 2.75, "delta": 1e-5, "max_grad_norm": 1.0},
        "secure_aggregation": {"threshold": 3},
    }


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def release(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    directory = tmp_path / "release"
    write_release(directory, _weights(), _manifest(), key)
    return directory


def _rewrite_manifest(directory: Path, change: Any) -> None:
    path = directory / MANIFEST_FILE
    signed = json.loads(path.read_text(encoding="utf-8"))
    change(signed)
    path.write_text(json.dumps(signed), encoding="utf-8")


# --------------------------------------------------------------------------- round trip


def test_release_round_trip_returns_manifest_and_bit_exact_weights(
    release: Path, key: Ed25519PrivateKey
) -> None:
    manifest, weights = verify_release(release, public_key_pem(key))

    assert sorted(p.name for p in release.iterdir()) == [MANIFEST_FILE, MODEL_FILE]
    assert manifest["format"] == RELEASE_FORMAT
    assert manifest["model_digest"] == model_digest((release / MODEL_FILE).read_bytes())
    assert {k: v for k, v in manifest.items() if k not in ("format", "model_digest")} == (
        _manifest()
    )
    expected = _weights()
    assert weights.keys() == expected.keys()
    for name, array in expected.items():
        assert weights[name].dtype == array.dtype
        assert weights[name].shape == array.shape
        assert weights[name].tobytes() == array.tobytes()


def test_write_release_returns_the_signed_manifest_written(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    signed = write_release(tmp_path / "r", _weights(), _manifest(), key)

    on_disk = json.loads((tmp_path / "r" / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert on_disk == signed
    assert signed["signature"]["algorithm"] == "ed25519"
    assert signed["signature"]["public_key_fingerprint"] == public_key_fingerprint(
        public_key_pem(key)
    )
    assert verify_signed_manifest(signed, public_key_pem(key)) == signed["manifest"]
    assert not list((tmp_path / "r").glob(".*.tmp"))


def test_write_release_refuses_a_non_empty_directory(release: Path, key: Ed25519PrivateKey) -> None:
    with pytest.raises(ReleaseError) as excinfo:
        write_release(release, _weights(), _manifest(), key)

    assert excinfo.value.code == "release-directory-not-empty"
    assert str(release) in str(excinfo.value)


def test_write_release_accepts_an_existing_empty_directory(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    write_release(tmp_path, _weights(), _manifest(), key)

    manifest, _ = verify_release(tmp_path, public_key_pem(key))
    assert manifest["rounds"] == 5


def test_write_release_checks_everything_before_writing(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    directory = tmp_path / "r"

    with pytest.raises(ReleaseError) as excinfo:
        write_release(directory, _weights(), {"epsilon": math.inf}, key)

    assert excinfo.value.code == "release-malformed-manifest"
    assert not directory.exists()


# --------------------------------------------------------------------------- tampering


def test_verify_release_tampered_weights_byte_is_a_digest_mismatch(
    release: Path, key: Ed25519PrivateKey
) -> None:
    model = release / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01
    model.write_bytes(bytes(data))

    with pytest.raises(ReleaseError) as excinfo:
        verify_release(release, public_key_pem(key))

    assert excinfo.value.code == "release-digest-mismatch"
    assert str(model) in str(excinfo.value)
    assert model_digest(bytes(data)) in str(excinfo.value)


def test_verify_release_altered_manifest_field_is_a_bad_signature(
    release: Path, key: Ed25519PrivateKey
) -> None:
    def loosen_epsilon(signed: dict[str, Any]) -> None:
        signed["manifest"]["dp"]["epsilon"] = 0.5

    _rewrite_manifest(release, loosen_epsilon)

    with pytest.raises(ReleaseError) as excinfo:
        verify_release(release, public_key_pem(key))

    assert excinfo.value.code == "release-bad-signature"
    assert "altered" in str(excinfo.value)
    assert str(release / MANIFEST_FILE) in str(excinfo.value)


def test_verify_release_with_another_key_names_both_fingerprints(
    release: Path, key: Ed25519PrivateKey
) -> None:
    other = public_key_pem(Ed25519PrivateKey.generate())

    with pytest.raises(ReleaseError) as excinfo:
        verify_release(release, other)

    assert excinfo.value.code == "release-bad-signature"
    assert public_key_fingerprint(public_key_pem(key)) in str(excinfo.value)
    assert public_key_fingerprint(other) in str(excinfo.value)


def test_verify_signed_manifest_forged_fingerprint_still_fails(key: Ed25519PrivateKey) -> None:
    attacker = Ed25519PrivateKey.generate()
    signed = sign_manifest({"model_digest": model_digest(b"x")}, attacker)
    signed["signature"]["public_key_fingerprint"] = public_key_fingerprint(public_key_pem(key))

    with pytest.raises(ReleaseError) as excinfo:
        verify_signed_manifest(signed, public_key_pem(key))

    assert excinfo.value.code == "release-bad-signature"


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (json.dumps({"model_digest": "sha256:" + "0" * 64}), "release-unsigned"),
        (json.dumps({"manifest": {"model_digest": "x"}}), "release-unsigned"),
        (json.dumps({"manifest": {}, "signature": None}), "release-unsigned"),
        ("{not json", "release-malformed-manifest"),
        ('{"manifest": {"a": NaN}, "signature": {}}', "release-malformed-manifest"),
        ("[1, 2]", "release-malformed-manifest"),
        (json.dumps({"signature": {}}), "release-malformed-manifest"),
        (
            json.dumps({"manifest": {}, "signature": {"algorithm": "rsa", "value": ""}}),
            "release-malformed-manifest",
        ),
        (
            json.dumps(
                {
                    "manifest": {},
                    "signature": {
                        "algorithm": "ed25519",
                        "public_key_fingerprint": "sha256:00",
                        "value": "not base64!",
                    },
                }
            ),
            "release-malformed-manifest",
        ),
    ],
)
def test_verify_release_unsigned_or_malformed_manifest(
    release: Path, key: Ed25519PrivateKey, content: str, code: str
) -> None:
    (release / MANIFEST_FILE).write_text(content, encoding="utf-8")

    with pytest.raises(ReleaseError) as excinfo:
        verify_release(release, public_key_pem(key))

    assert excinfo.value.code == code
    assert str(release / MANIFEST_FILE) in str(excinfo.value)


def test_verify_release_refuses_another_format(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    signed = sign_manifest({"model_digest": model_digest(b""), "format": "lepton-release/9"}, key)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(signed), encoding="utf-8")

    with pytest.raises(ReleaseError) as excinfo:
        verify_release(tmp_path, public_key_pem(key))

    assert excinfo.value.code == "release-unsupported-format"


@pytest.mark.parametrize("missing", [MANIFEST_FILE, MODEL_FILE])
def test_verify_release_missing_file_is_named(
    release: Path, key: Ed25519PrivateKey, missing: str
) -> None:
    (release / missing).unlink()

    with pytest.raises(ReleaseError) as excinfo:
        verify_release(release, public_key_pem(key))

    assert excinfo.value.code == "release-missing-file"
    assert str(release / missing) in str(excinfo.value)


def test_verify_release_missing_directory(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with pytest.raises(ReleaseError) as excinfo:
        verify_release(tmp_path / "nowhere", public_key_pem(key))

    assert excinfo.value.code == "release-missing-file"


def test_verify_release_refuses_a_public_key_that_is_not_ed25519(release: Path) -> None:
    public = generate_private_key(SECP256R1()).public_key()
    ec_pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()

    with pytest.raises(ReleaseError) as excinfo:
        verify_release(release, ec_pem)

    assert excinfo.value.code == "release-bad-public-key"


# --------------------------------------------------------------------------- signing


def test_sign_manifest_requires_model_digest(key: Ed25519PrivateKey) -> None:
    with pytest.raises(ReleaseError) as excinfo:
        sign_manifest({"run": "r1"}, key)

    assert excinfo.value.code == "release-malformed-manifest"
    assert "model_digest" in str(excinfo.value)


def test_sign_manifest_signature_covers_canonical_json(key: Ed25519PrivateKey) -> None:
    manifest = {"b": [1, 2.5], "a": "é", "model_digest": model_digest(b"w")}

    signed = sign_manifest(manifest, key)
    signature = base64.b64decode(signed["signature"]["value"])
    key.public_key().verify(signature, canonical_json(manifest))
    assert signed["manifest"] == manifest


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"b": 1, "a": [True, None, "é"]}, '{"a":[true,null,"é"],"b":1}'.encode()),
        ({"z": {"y": 1.5, "x": 0}}, b'{"z":{"x":0,"y":1.5}}'),
    ],
)
def test_canonical_json_sorted_compact_utf8(obj: dict[str, Any], expected: bytes) -> None:
    assert canonical_json(obj) == expected


@pytest.mark.parametrize(
    "obj",
    [
        {"x": math.nan},
        {"x": [math.inf]},
        {"x": {"y": -math.inf}},
        {"x": {1: "int key"}},
        {"x": b"bytes"},
        {"x": object()},
    ],
)
def test_canonical_json_rejects_what_json_cannot_hold(obj: dict[str, Any]) -> None:
    with pytest.raises(ReleaseError) as excinfo:
        canonical_json(obj)

    assert excinfo.value.code == "release-malformed-manifest"


# --------------------------------------------------------------------------- keys


def test_generate_signing_key_writes_0600_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "release.key"

    key = generate_signing_key(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text(encoding="ascii").startswith("-----BEGIN PRIVATE KEY-----")
    assert public_key_pem(load_signing_key(path)) == public_key_pem(key)


def test_generate_signing_key_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "release.key"
    generate_signing_key(path)
    before = path.read_bytes()

    with pytest.raises(ReleaseError) as excinfo:
        generate_signing_key(path)

    assert excinfo.value.code == "signing-key-exists"
    assert path.read_bytes() == before


def test_load_signing_key_missing(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError) as excinfo:
        load_signing_key(tmp_path / "absent.key")

    assert excinfo.value.code == "signing-key-missing"
    assert "absent.key" in str(excinfo.value)


def test_load_signing_key_malformed_encrypted_and_wrong_type(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key", encoding="ascii")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"secret")
        )
    )
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(
        generate_private_key(SECP256R1()).private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
    )

    for path in (garbage, encrypted, ec_key):
        with pytest.raises(ReleaseError) as excinfo:
            load_signing_key(path)
        assert excinfo.value.code == "signing-key-malformed"
        assert str(path) in str(excinfo.value)


def test_public_key_fingerprint_is_sha256_of_raw_key(key: Ed25519PrivateKey) -> None:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    assert public_key_fingerprint(public_key_pem(key)) == (
        "sha256:" + hashlib.sha256(raw).hexdigest()
    )
    assert public_key_pem(key) == public_key_pem(key.public_key())


# --------------------------------------------------------------------------- weights


def test_weights_to_safetensors_refuses_bad_weights() -> None:
    cases: list[Any] = [{}, {"w": [1.0, 2.0]}, {"w": np.array(["text"])}, {"": np.zeros(1)}]
    for weights in cases:
        with pytest.raises(ReleaseError) as excinfo:
            weights_to_safetensors(weights)
        assert excinfo.value.code == "release-invalid-weights"


def test_safetensors_to_weights_refuses_garbage() -> None:
    with pytest.raises(ReleaseError) as excinfo:
        safetensors_to_weights(b"definitely not safetensors")

    assert excinfo.value.code == "release-malformed-weights"


def test_weights_keep_shape_of_scalars_and_convert_big_endian() -> None:
    weights = {"scalar": np.array(3.5), "be": np.arange(6, dtype=">f4").reshape(2, 3).T}

    back = safetensors_to_weights(weights_to_safetensors(weights))

    assert back["scalar"].shape == ()
    np.testing.assert_array_equal(back["be"], weights["be"])


_float32_arrays = hnp.arrays(
    dtype=np.float32,
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        keys=st.text(min_size=1, max_size=20),
        values=_float32_arrays,
        min_size=1,
        max_size=6,
    )
)
def test_weights_round_trip_bit_exactly_through_safetensors(
    weights: dict[str, np.ndarray],
) -> None:
    back = safetensors_to_weights(weights_to_safetensors(weights))

    assert back.keys() == weights.keys()
    for name, array in weights.items():
        assert back[name].dtype == np.float32
        assert back[name].shape == array.shape
        assert back[name].tobytes() == array.tobytes()
