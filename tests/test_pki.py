"""Tests for lepton_fl.crypto.pki: real keys, real certificates, a real TLS handshake."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from lepton_fl.crypto import (
    PKIError,
    PKIPaths,
    create_node_key,
    create_pki,
    describe_pki,
    load_pki,
    node_public_key_fingerprint,
)

NODES = ("hospital-a", "bank_2")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKIPaths:
    """One PKI shared by the read-only tests of this module."""
    return create_pki(tmp_path_factory.mktemp("pki") / "certs", node_names=NODES)


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> PKIPaths:
    """A second, unrelated PKI (a different CA)."""
    return create_pki(tmp_path_factory.mktemp("other") / "certs", node_names=())


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------ certificates


def test_create_pki_server_certificate_is_signed_by_ca(pki: PKIPaths) -> None:
    ca, server = _cert(pki.ca_certificate), _cert(pki.server_certificate)
    server.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)  # self-signed root
    assert server.issuer == ca.subject


def test_create_pki_server_certificate_has_sans_and_server_usage(pki: PKIPaths) -> None:
    server = _cert(pki.server_certificate)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    usage = server.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_create_pki_ca_is_constrained_ca(pki: PKIPaths) -> None:
    ca = _cert(pki.ca_certificate)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert "Lepton FL throwaway CA" in ca.subject.rfc4514_string()


def test_create_pki_validity_window_covers_now_and_valid_days(pki: PKIPaths) -> None:
    now = dt.datetime.now(dt.UTC)
    for cert in (_cert(pki.ca_certificate), _cert(pki.server_certificate)):
        assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
        remaining = cert.not_valid_after_utc - now
        assert dt.timedelta(days=29, hours=23) < remaining <= dt.timedelta(days=30)


def test_create_pki_custom_hosts_become_sans(tmp_path: Path) -> None:
    paths = create_pki(
        tmp_path / "pki", node_names=(), hosts=("10.0.0.5", "::1", "SuperLink.example.org")
    )
    san = _cert(paths.server_certificate).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]
    assert san.value.get_values_for_type(x509.DNSName) == ["superlink.example.org"]


# ------------------------------------------------------------------ TLS handshake


@contextmanager
def _tls_server(pki: PKIPaths) -> Iterator[int]:
    """Serve TLS with server.pem/server.key on an ephemeral 127.0.0.1 port; yield the port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_certificate, pki.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"ok")
                except OSError:  # the client refused our certificate
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _client_context(ca_file: Path) -> ssl.SSLContext:
    """A client context trusting only ``ca_file``, built the way flwr's SuperNode does."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ca_file.read_text(encoding="ascii"))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def _handshake(port: int, context: ssl.SSLContext, hostname: str) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        return tls.recv(2)


@pytest.fixture(scope="module")
def tls_port(pki: PKIPaths) -> Iterator[int]:
    with _tls_server(pki) as port:
        yield port


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
def test_tls_handshake_succeeds_with_pki_ca(pki: PKIPaths, tls_port: int, hostname: str) -> None:
    assert _handshake(tls_port, _client_context(pki.ca_certificate), hostname) == b"ok"


def test_tls_handshake_fails_with_other_ca(other_pki: PKIPaths, tls_port: int) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(tls_port, _client_context(other_pki.ca_certificate), "127.0.0.1")


def test_tls_handshake_fails_for_host_not_in_sans(pki: PKIPaths, tls_port: int) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(tls_port, _client_context(pki.ca_certificate), "superlink.example.org")


# ------------------------------------------------------------------ node keys


def _flwr_supernode_key_loader() -> Callable[[argparse.Namespace], object]:
    """The function flower-supernode uses to load --auth-supernode-private-key."""
    module = pytest.importorskip("flwr.supernode.cli.flower_supernode")
    loader: Callable[[argparse.Namespace], object] | None = getattr(
        module, "_try_setup_client_authentication", None
    )
    if loader is None:
        pytest.skip("this flwr has no _try_setup_client_authentication")
    return loader


def test_create_pki_node_public_key_is_openssh_ec(pki: PKIPaths) -> None:
    node = pki.nodes["hospital-a"]
    text = node.public_key.read_text()
    assert text.startswith("ecdsa-sha2-nistp384 AAAA")
    public = serialization.load_ssh_public_key(text.encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP384R1)


def test_create_pki_node_private_key_loads_like_supernode(pki: PKIPaths) -> None:
    loader = _flwr_supernode_key_loader()
    for node in pki.nodes.values():
        result = loader(
            argparse.Namespace(
                auth_supernode_private_key=str(node.private_key),
                auth_supernode_public_key=None,
            )
        )
        assert isinstance(result, tuple)
        private, public = result
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        registered = serialization.load_ssh_public_key(node.public_key.read_bytes())
        assert isinstance(registered, ec.EllipticCurvePublicKey)
        assert public.public_numbers() == registered.public_numbers()


def test_create_pki_node_key_pair_passes_flwr_register_and_signature(pki: PKIPaths) -> None:
    register = pytest.importorskip("flwr.cli.supernode.register")
    asym = pytest.importorskip("flwr.supercore.primitives.asymmetric")
    node = pki.nodes["bank_2"]
    registered_pem = register.try_load_public_key(node.public_key)  # what the SuperLink stores
    private = serialization.load_ssh_private_key(node.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    signature = asym.sign_message(private, b"2026-01-01T00:00:00")
    assert asym.verify_signature(
        asym.bytes_to_public_key(registered_pem), b"2026-01-01T00:00:00", signature
    )


def test_create_pki_private_keys_are_owner_only(pki: PKIPaths) -> None:
    private = [pki.ca_key, pki.server_key] + [n.private_key for n in pki.nodes.values()]
    assert {_mode(path) for path in private} == {0o600}
    assert _mode(pki.directory) == 0o700
    assert _mode(pki.directory / "nodes") == 0o700
    assert _mode(pki.ca_certificate) == 0o644


def test_create_pki_node_keys_are_git_ignored(pki: PKIPaths) -> None:
    ignore = pki.directory / "nodes" / ".gitignore"
    assert "*" in ignore.read_text().splitlines()


def test_create_node_key_standalone_refuses_overwrite(tmp_path: Path) -> None:
    first = create_node_key(tmp_path, "site-1")
    assert first.private_key == tmp_path / "nodes" / "site-1"
    assert first.public_key == tmp_path / "nodes" / "site-1.pub"
    assert _mode(first.private_key) == 0o600
    before = first.public_key.read_bytes()
    with pytest.raises(PKIError, match="overwrite=True") as err:
        create_node_key(tmp_path, "site-1")
    assert err.value.code == "node_key_exists"
    create_node_key(tmp_path, "site-1", overwrite=True)
    assert first.public_key.read_bytes() != before
    assert _mode(first.private_key) == 0o600


def test_node_public_key_fingerprint_is_sha256_of_blob(pki: PKIPaths) -> None:
    path = pki.nodes["hospital-a"].public_key
    blob = base64.b64decode(path.read_text().split()[1])
    assert node_public_key_fingerprint(path) == hashlib.sha256(blob).hexdigest()
    assert node_public_key_fingerprint(path) != node_public_key_fingerprint(
        pki.nodes["bank_2"].public_key
    )


def test_node_public_key_fingerprint_rejects_non_ssh_file(pki: PKIPaths) -> None:
    with pytest.raises(PKIError, match="not an OpenSSH public key") as err:
        node_public_key_fingerprint(pki.ca_certificate)
    assert err.value.code == "invalid_public_key"


# ------------------------------------------------------------------ load / describe


def test_load_pki_finds_created_files(pki: PKIPaths) -> None:
    assert load_pki(pki.directory) == pki
    assert load_pki(pki.directory, node_names=["bank_2"]).nodes == {"bank_2": pki.nodes["bank_2"]}


def test_describe_pki_mentions_subject_sans_expiry_and_fingerprints(pki: PKIPaths) -> None:
    text = describe_pki(pki)
    assert "Lepton FL throwaway CA" in text
    assert "SANs: 127.0.0.1, localhost" in text
    assert _cert(pki.server_certificate).not_valid_after_utc.strftime("%Y-%m-%d") in text
    for node in pki.nodes.values():
        assert node_public_key_fingerprint(node.public_key) in text


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("name", ["", "a b", "../evil", "x" * 64, "node.1", "ä"])
def test_create_pki_rejects_bad_node_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(PKIError, match="letters, digits") as err:
        create_pki(tmp_path / "pki", node_names=[name])
    assert err.value.code == "invalid_node_name"
    assert not (tmp_path / "pki").exists()  # nothing written


@pytest.mark.parametrize("hosts", [(), ("bad host",), ("-x.example",)])
def test_create_pki_rejects_bad_hosts(tmp_path: Path, hosts: tuple[str, ...]) -> None:
    with pytest.raises(PKIError) as err:
        create_pki(tmp_path / "pki", node_names=(), hosts=hosts)
    assert err.value.code == "invalid_host"


def test_create_pki_refuses_to_overwrite_existing_ca(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    first = create_pki(directory, node_names=["n1"])
    ca_before = first.ca_certificate.read_bytes()
    with pytest.raises(PKIError, match="overwrite=True") as err:
        create_pki(directory, node_names=["n1"])
    assert err.value.code == "pki_exists"
    assert str(directory) in str(err.value)
    assert first.ca_certificate.read_bytes() == ca_before


def test_create_pki_overwrite_replaces_ca_with_safe_modes(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    first = create_pki(directory, node_names=["n1"])
    ca_before = first.ca_certificate.read_bytes()
    second = create_pki(directory, node_names=["n1"], overwrite=True)
    assert second.ca_certificate.read_bytes() != ca_before
    _cert(second.server_certificate).verify_directly_issued_by(_cert(second.ca_certificate))
    assert _mode(second.ca_key) == _mode(second.nodes["n1"].private_key) == 0o600
    assert not list(directory.rglob("*.tmp"))


def test_load_pki_missing_file_says_run_certs_init(tmp_path: Path) -> None:
    paths = create_pki(tmp_path / "pki", node_names=())
    paths.server_key.unlink()
    with pytest.raises(PKIError, match="lepton certs init") as err:
        load_pki(paths.directory)
    assert err.value.code == "missing_file"
    assert str(paths.server_key) in str(err.value)


def test_load_pki_missing_node_or_directory_says_run_certs_init(
    pki: PKIPaths, tmp_path: Path
) -> None:
    with pytest.raises(PKIError, match=r"nodes/nobody.*lepton certs init"):
        load_pki(pki.directory, node_names=["nobody"])
    with pytest.raises(PKIError, match="does not exist.*lepton certs init"):
        load_pki(tmp_path / "absent")


def test_create_pki_rejects_bad_valid_days(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="valid_days") as err:
        create_pki(tmp_path / "pki", node_names=(), valid_days=0)
    assert err.value.code == "invalid_argument"
