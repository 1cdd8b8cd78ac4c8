"""Throwaway PKI for a Lepton FL deployment: a CA, a SuperLink TLS certificate, node keys.

Layout of a PKI directory (created with mode 0700; private keys 0600)::

    ca.pem            CA certificate (give to every SuperNode: ``--root-certificates``)
    ca.key            CA private key, PKCS#8 PEM, unencrypted (keep on the coordinator)
    server.pem        SuperLink certificate, signed by the CA (``--ssl-certfile``)
    server.key        SuperLink private key, PKCS#8 PEM (``--ssl-keyfile``)
    nodes/<name>      node private key, OpenSSH format (``--auth-supernode-private-key``)
    nodes/<name>.pub  node public key, OpenSSH format (``flwr supernode register``)

Why these formats (checked against flwr 1.42):

* ``flwr.supernode.cli.flower_supernode._try_setup_client_authentication`` loads
  ``--auth-supernode-private-key`` with ``cryptography``'s ``load_ssh_private_key(data, None)``:
  the key must be in the OpenSSH private key format (``-----BEGIN OPENSSH PRIVATE KEY-----``),
  unencrypted, and an EC key; a PKCS#8/SEC1 PEM key is refused.
* ``flwr.cli.supernode.register.try_load_public_key`` reads the public key with
  ``load_ssh_public_key`` and accepts only EC keys on a NIST curve
  (``flwr.supercore.primitives.asymmetric.uses_nist_ec_curve``); the SuperLink verifies
  node signatures with ECDSA/SHA-256. Node keys here are P-384 (``ecdsa-sha2-nistp384``),
  the curve Flower itself generates.
* The SuperLink serves HTTPS through uvicorn (Python ``ssl``), the SuperNode verifies it
  with an ``ssl.SSLContext(PROTOCOL_TLS_CLIENT)`` loaded from ``--root-certificates``, so the
  server certificate needs a SubjectAlternativeName matching the address nodes dial.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lepton_fl.files import write_file

__all__ = [
    "CA_CERTIFICATE_FILE",
    "CA_KEY_FILE",
    "NODES_DIR",
    "SERVER_CERTIFICATE_FILE",
    "SERVER_KEY_FILE",
    "NodeKeyPaths",
    "PKIError",
    "PKIPaths",
    "create_node_key",
    "create_pki",
    "describe_pki",
    "load_pki",
    "node_public_key_fingerprint",
]

CA_CERTIFICATE_FILE: Final = "ca.pem"
CA_KEY_FILE: Final = "ca.key"
SERVER_CERTIFICATE_FILE: Final = "server.pem"
SERVER_KEY_FILE: Final = "server.key"
NODES_DIR: Final = "nodes"
PUBLIC_KEY_SUFFIX: Final = ".pub"

_PRIVATE_MODE: Final = 0o600
_PUBLIC_MODE: Final = 0o644
_DIRECTORY_MODE: Final = 0o700
_MAX_VALID_DAYS: Final = 3650
_CLOCK_SKEW: Final = dt.timedelta(minutes=5)
_SERVER_COMMON_NAME: Final = "Lepton FL SuperLink"
_ORGANIZATION: Final = "Lepton FL"
_INIT_HINT: Final = "run `lepton certs init` to create the PKI"

# The same rule as node.toml's [node].name, so every key name is a valid node name.
_NODE_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_DNS_LABEL_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

# Curves and hashes: P-384 everywhere (Flower's own choice for node keys), SHA-384 signatures.
_CURVE: Final = ec.SECP384R1
_SIGNATURE_HASH: Final = hashes.SHA384


class PKIError(RuntimeError):
    """A PKI operation failed; ``str(error)`` says what to fix.

    ``code`` is stable for programs: ``invalid_node_name``, ``invalid_host``,
    ``invalid_argument``, ``pki_exists``, ``node_key_exists``, ``missing_file``,
    ``invalid_public_key``, ``invalid_certificate``.
    """

    def __init__(self, code: str, message: str) -> None:
        """Create an error with a machine-readable ``code`` and a human ``message``."""
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class NodeKeyPaths:
    """One SuperNode's key pair on disk.

    ``public_key`` is an OpenSSH public key line (``ecdsa-sha2-nistp384 AAAA... comment``)
    for ``flwr supernode register``; ``private_key`` is an unencrypted OpenSSH private key
    for ``flower-supernode --auth-supernode-private-key``.
    """

    name: str
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class PKIPaths:
    """The files of a PKI directory (see the module docstring for the layout)."""

    directory: Path
    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path
    nodes: dict[str, NodeKeyPaths]


# --------------------------------------------------------------------------- validation


def _validate_node_name(name: str) -> str:
    """Return ``name`` if it is a valid node name, else raise ``invalid_node_name``."""
    if not isinstance(name, str) or _NODE_NAME_RE.fullmatch(name) is None:
        raise PKIError(
            "invalid_node_name",
            f"invalid node name {name!r}: use 1-63 lower-case letters, digits, '-' and '_', "
            "starting with a letter or digit (e.g. 'hospital-a')",
        )
    return name


def _validate_node_names(names: Iterable[str]) -> list[str]:
    """Validate node names and refuse duplicates, keeping their order."""
    seen: list[str] = []
    for name in names:
        if _validate_node_name(name) in seen:
            raise PKIError("invalid_node_name", f"node name {name!r} is given twice")
        seen.append(name)
    return seen


def _parse_host(host: str) -> x509.GeneralName:
    """Turn a host into a SAN entry: an IP address, or a DNS name (lower-cased)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.split(".")
    if not host or len(host) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in labels):
        raise PKIError(
            "invalid_host",
            f"invalid host {host!r} for the server certificate: give an IP address "
            "(e.g. 127.0.0.1) or a DNS name (e.g. superlink.example.org)",
        )
    return x509.DNSName(host.lower())


def _subject_alternative_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """Build the SAN list for ``hosts``, without duplicates; refuse an empty list."""
    if isinstance(hosts, str) or not hosts:
        raise PKIError(
            "invalid_host",
            "give at least one host for the server certificate as a list, "
            "e.g. hosts=('127.0.0.1', 'localhost')",
        )
    names: list[x509.GeneralName] = []
    for host in hosts:
        entry = _parse_host(host)
        if entry not in names:
            names.append(entry)
    return names


def _validate_arguments(ca_common_name: str, valid_days: int) -> None:
    """Check the CA name and validity period."""
    if not 1 <= len(ca_common_name) <= 64:
        raise PKIError(
            "invalid_argument",
            f"ca_common_name must be 1-64 characters, got {len(ca_common_name)}",
        )
    if isinstance(valid_days, bool) or not 1 <= valid_days <= _MAX_VALID_DAYS:
        raise PKIError(
            "invalid_argument",
            f"valid_days must be between 1 and {_MAX_VALID_DAYS}, got {valid_days!r}",
        )


# --------------------------------------------------------------------------- file system


def _layout(directory: Path, node_names: Iterable[str]) -> PKIPaths:
    """Return the paths of a PKI in ``directory`` (nothing is read or written)."""
    return PKIPaths(
        directory=directory,
        ca_certificate=directory / CA_CERTIFICATE_FILE,
        ca_key=directory / CA_KEY_FILE,
        server_certificate=directory / SERVER_CERTIFICATE_FILE,
        server_key=directory / SERVER_KEY_FILE,
        nodes={name: _node_layout(directory, name) for name in node_names},
    )


def _node_layout(directory: Path, name: str) -> NodeKeyPaths:
    """Return the key paths of node ``name`` in PKI ``directory``."""
    nodes = directory / NODES_DIR
    return NodeKeyPaths(
        name=name,
        private_key=nodes / name,
        public_key=nodes / f"{name}{PUBLIC_KEY_SUFFIX}",
    )


def _ensure_private_directory(path: Path) -> None:
    """Create ``path`` (and parents) if needed and restrict it to its owner (0700)."""
    path.mkdir(mode=_DIRECTORY_MODE, parents=True, exist_ok=True)
    path.chmod(_DIRECTORY_MODE)


def _ensure_nodes_directory(path: Path) -> None:
    """Create ``nodes/`` (0700) with a ``.gitignore`` of ``*``.

    Node private keys have no extension, so the repository's ``*.key``/``*.pem``/``*.pub``
    ignore patterns do not cover them; this keeps them out of git wherever the PKI lives.
    """
    _ensure_private_directory(path)
    ignore = path / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# generated node keys: never commit\n*\n", encoding="utf-8")


def _write_file(path: Path, data: bytes, *, mode: int, overwrite: bool) -> None:
    """Write ``data`` to ``path`` with permissions ``mode`` from the first byte on.

    `lepton_fl.files.write_file`: a key is never readable by others. Without ``overwrite``
    an existing file is refused (``pki_exists``); with it, the new file replaces the old
    atomically.
    """
    try:
        write_file(path, data, mode=mode, replace=overwrite)
    except FileExistsError as err:
        raise PKIError(
            "pki_exists",
            f"{path} already exists: remove it, or pass overwrite=True "
            "(--overwrite on the command line)",
        ) from err


def _write_private(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write a private key (mode 0600)."""
    _write_file(path, data, mode=_PRIVATE_MODE, overwrite=overwrite)


def _write_public(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write a certificate or public key (mode 0644)."""
    _write_file(path, data, mode=_PUBLIC_MODE, overwrite=overwrite)


def _refuse_existing_pki(paths: PKIPaths) -> None:
    """Raise ``pki_exists`` if ``paths.directory`` already holds PKI material."""
    candidates = [paths.ca_certificate, paths.ca_key, paths.server_certificate, paths.server_key]
    for node in paths.nodes.values():
        candidates += [node.private_key, node.public_key]
    existing = [path for path in candidates if path.exists() or path.is_symlink()]
    if existing:
        raise PKIError(
            "pki_exists",
            f"PKI directory {paths.directory} already holds {existing[0].name}: refusing to "
            "replace it (SuperNodes trust the old CA and the SuperLink knows the old node "
            "keys). Choose another directory, or pass overwrite=True (--overwrite on the "
            "command line) to replace it.",
        )


# --------------------------------------------------------------------------- crypto


def _new_key() -> ec.EllipticCurvePrivateKey:
    """Generate an EC private key on the PKI curve."""
    return ec.generate_private_key(_CURVE())


def _pkcs8_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Serialize a TLS/CA private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def _validity(valid_days: int) -> tuple[dt.datetime, dt.datetime]:
    """Return (not_before, not_after), back-dated a little for clock skew."""
    now = dt.datetime.now(dt.UTC)
    return now - _CLOCK_SKEW, now + dt.timedelta(days=valid_days)


def _build_ca(
    key: ec.EllipticCurvePrivateKey, common_name: str, valid_days: int
) -> x509.Certificate:
    """Self-sign a CA certificate that may sign end-entity certificates only."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    not_before, not_after = _validity(valid_days)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    return builder.sign(key, _SIGNATURE_HASH())


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """Key usage: CA keys sign certificates and CRLs; server keys sign handshakes."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _build_server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    sans: list[x509.GeneralName],
    valid_days: int,
) -> x509.Certificate:
    """Issue the SuperLink's TLS certificate from the CA."""
    not_before, not_after = _validity(valid_days)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                    x509.NameAttribute(NameOID.COMMON_NAME, _SERVER_COMMON_NAME),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    return builder.sign(ca_key, _SIGNATURE_HASH())


def _pem(cert: x509.Certificate) -> bytes:
    """Serialize a certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------- public API


def create_node_key(directory: Path, name: str, *, overwrite: bool = False) -> NodeKeyPaths:
    """Generate node ``name``'s P-384 key pair under ``directory/nodes/``.

    ``directory`` is the PKI directory (it need not hold a CA: an institution can create
    its node key on its own host). Writes ``nodes/<name>`` (OpenSSH private key, 0600,
    what ``flower-supernode --auth-supernode-private-key`` loads) and ``nodes/<name>.pub``
    (OpenSSH public key line, for ``flwr supernode register``). An existing key is
    replaced only with ``overwrite=True``: a new key must be registered again.
    """
    _validate_node_name(name)
    paths = _node_layout(Path(directory), name)
    if not overwrite and (paths.private_key.exists() or paths.public_key.exists()):
        raise PKIError(
            "node_key_exists",
            f"node key {paths.private_key} already exists: keep it (it may be registered "
            "with the SuperLink), or pass overwrite=True (--overwrite on the command line) "
            "and register the new key",
        )
    _ensure_private_directory(Path(directory))
    _ensure_nodes_directory(paths.private_key.parent)
    key = _new_key()
    private = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.OpenSSH,
        encryption_algorithm=serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        encoding=serialization.Encoding.OpenSSH,
        format=serialization.PublicFormat.OpenSSH,
    )
    _write_private(paths.private_key, private, overwrite=overwrite)
    _write_public(paths.public_key, public + f" lepton-node:{name}\n".encode(), overwrite=overwrite)
    return paths


def create_pki(
    directory: Path,
    *,
    node_names: Sequence[str],
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    ca_common_name: str = "Lepton FL throwaway CA",
    valid_days: int = 30,
    overwrite: bool = False,
) -> PKIPaths:
    """Create a CA, a SuperLink certificate for ``hosts`` and one key pair per node.

    All arguments are checked before anything is written. A directory that already holds
    PKI material is refused unless ``overwrite=True``. Returns the paths written.
    """
    directory = Path(directory)
    names = _validate_node_names(node_names)
    sans = _subject_alternative_names(hosts)
    _validate_arguments(ca_common_name, valid_days)
    paths = _layout(directory, names)
    if not overwrite:
        _refuse_existing_pki(paths)
    _ensure_private_directory(directory)

    ca_key = _new_key()
    ca_cert = _build_ca(ca_key, ca_common_name, valid_days)
    server_key = _new_key()
    server_cert = _build_server_certificate(server_key, ca_cert, ca_key, sans, valid_days)

    _write_private(paths.ca_key, _pkcs8_pem(ca_key), overwrite=overwrite)
    _write_public(paths.ca_certificate, _pem(ca_cert), overwrite=overwrite)
    _write_private(paths.server_key, _pkcs8_pem(server_key), overwrite=overwrite)
    _write_public(paths.server_certificate, _pem(server_cert), overwrite=overwrite)
    for name in names:
        create_node_key(directory, name, overwrite=overwrite)
    return paths


def load_pki(directory: Path, *, node_names: Sequence[str] = ()) -> PKIPaths:
    """Locate an existing PKI in ``directory`` (files are checked to exist, not parsed).

    With ``node_names`` empty, every node found in ``nodes/`` with both key files is
    included; otherwise exactly the named nodes, each of which must exist.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PKIError("missing_file", f"PKI directory {directory} does not exist: {_INIT_HINT}")
    names = _validate_node_names(node_names) if node_names else _discover_nodes(directory)
    paths = _layout(directory, names)
    required = [paths.ca_certificate, paths.ca_key, paths.server_certificate, paths.server_key]
    for node in paths.nodes.values():
        required += [node.private_key, node.public_key]
    for path in required:
        if not path.is_file():
            raise PKIError("missing_file", f"PKI file {path} is missing: {_INIT_HINT}")
    return paths


def _discover_nodes(directory: Path) -> list[str]:
    """Names of the nodes in ``directory/nodes`` that have both a private and a public key."""
    nodes = directory / NODES_DIR
    if not nodes.is_dir():
        return []
    names = []
    for public in sorted(nodes.glob(f"*{PUBLIC_KEY_SUFFIX}")):
        name = public.name.removesuffix(PUBLIC_KEY_SUFFIX)
        if _NODE_NAME_RE.fullmatch(name) and (nodes / name).is_file():
            names.append(name)
    return names


def node_public_key_fingerprint(public_key_path: Path) -> str:
    """Return the SHA-256 of an OpenSSH public key's blob, as lower-case hex.

    This is the digest that ``ssh-keygen -lf KEY.pub`` prints (base64 there, hex here).
    The key must be one that ``flwr supernode register`` accepts: EC on a NIST curve.
    """
    path = Path(public_key_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise PKIError("missing_file", f"public key file {path} does not exist") from err
    _check_node_public_key(path, data)
    blob = base64.b64decode(data.split()[1], validate=True)
    return hashlib.sha256(blob).hexdigest()


def _check_node_public_key(path: Path, data: bytes) -> None:
    """Raise ``invalid_public_key`` unless ``data`` is an OpenSSH EC public key."""
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as err:
        raise PKIError(
            "invalid_public_key",
            f"{path} is not an OpenSSH public key ({err}): expected a line like "
            "'ecdsa-sha2-nistp384 AAAA...'; regenerate it with `lepton certs init`",
        ) from err
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PKIError(
            "invalid_public_key",
            f"{path} holds a {type(key).__name__}: Flower node authentication needs an EC key "
            "on a NIST curve (ecdsa-sha2-nistp256/384/521)",
        )


def describe_pki(paths: PKIPaths) -> str:
    """Summarize a PKI for humans: subjects, validity, SANs and node key fingerprints."""
    ca_cert = _read_certificate(paths.ca_certificate)
    server_cert = _read_certificate(paths.server_certificate)
    lines = [f"PKI directory: {paths.directory}"]
    lines += _describe_certificate("CA certificate", paths.ca_certificate, ca_cert)
    lines += _describe_certificate("Server certificate", paths.server_certificate, server_cert)
    lines.append(f"  SANs: {', '.join(_san_strings(server_cert)) or '(none)'}")
    lines.append(f"  issued by the CA: {_is_issued_by(server_cert, ca_cert)}")
    lines.append(f"Nodes ({len(paths.nodes)}):" if paths.nodes else "Nodes: none")
    for name, node in sorted(paths.nodes.items()):
        fingerprint = node_public_key_fingerprint(node.public_key)
        lines.append(f"  {name}: {node.public_key} sha256={fingerprint}")
    return "\n".join(lines)


def _read_certificate(path: Path) -> x509.Certificate:
    """Load a PEM certificate, raising ``PKIError`` with a fix on failure."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError as err:
        raise PKIError("missing_file", f"PKI file {path} is missing: {_INIT_HINT}") from err
    except ValueError as err:
        raise PKIError(
            "invalid_certificate",
            f"{path} is not a PEM certificate ({err}): {_INIT_HINT} with overwrite",
        ) from err


def _describe_certificate(title: str, path: Path, cert: x509.Certificate) -> list[str]:
    """Lines describing one certificate."""
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    return [
        f"{title}: {path}",
        f"  subject: {cert.subject.rfc4514_string()}",
        f"  issuer: {cert.issuer.rfc4514_string()}",
        f"  valid: {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
        f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        f"  sha256: {fingerprint}",
    ]


def _san_strings(cert: x509.Certificate) -> list[str]:
    """The certificate's SAN IP addresses and DNS names as strings."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return ips + list(san.get_values_for_type(x509.DNSName))


def _is_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed ``cert``."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True
