"""`cunxiang deploy tls`: a private CA, the broker's certificate, and client certificates.

Everything is EC P-256 (quick, and in every TLS stack a terminal is likely to carry). The CA is made
once and kept in `--out`: later runs issue from it (a renewed broker certificate, another client),
so the CA bundle already on the controller and the terminals stays valid.

    ca.crt, ca.key           the CA (CA:TRUE, may sign leaves only); ca.key belongs offline
    server.crt, server.key   the broker's, for the --host names and addresses (serverAuth)
    NAME.crt, NAME.key       a client's, for a broker requiring certificates (clientAuth)

Keys are written 0600; certificates 0644.
"""

import datetime
import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 825
"""the longest lifetime Apple's and other clients accept for a TLS server certificate"""
BACKDATE = datetime.timedelta(hours=1)
"""certificates are valid from a little before now, for clocks running slightly behind"""
CA_NAME = "Cunxiang MQTT CA"

_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TlsError(ValueError):
    """The certificates cannot be made as asked; the message says why."""


@dataclass(frozen=True)
class Authority:
    """The CA: its certificate and the key that signs with it."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def subject_names(hosts: list[str]) -> list[x509.GeneralName]:
    """Subject alternative names for host names and IP addresses, as clients check them."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        name = host.lower().rstrip(".")
        if not _DNS_NAME.match(name):
            raise TlsError(f"not a host name or IP address: {host!r}")
        names.append(x509.DNSName(name))
    return names


def new_authority(now: datetime.datetime) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(certificate, key)


def issue(
    authority: Authority,
    common_name: str,
    now: datetime.datetime,
    *,
    server_names: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate and its new key: for a server when `server_names` are given, else a client."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()), critical=False
        )
    )
    if server_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(server_names), critical=False)
    return builder.sign(authority.key, hashes.SHA256()), key


def load_or_create_authority(out: Path, now: datetime.datetime) -> tuple[Authority, bool]:
    """The CA kept in `out`, or a new one written there; True when it is new."""
    cert_path, key_path = out / "ca.crt", out / "ca.key"
    if cert_path.exists() != key_path.exists():
        raise TlsError(f"{out} has only one of ca.crt and ca.key: restore the other or remove both")
    if cert_path.exists():
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TlsError(f"{key_path} is not an EC key made by `cunxiang deploy tls`")
        return Authority(certificate, key), False
    authority = new_authority(now)
    _write_pair(out, "ca", authority.certificate, authority.key)
    return authority, True


def _write_pair(out: Path, stem: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    _write(
        out / f"{stem}.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write(out / f"{stem}.crt", certificate.public_bytes(serialization.Encoding.PEM), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    # fchmod too: O_CREAT's mode does not apply to a file that already exists (a renewal).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), mode)
        file.write(data)


def mosquitto_lines(out: Path, mutual: bool) -> str:
    lines = [
        "listener 8883 0.0.0.0",
        f"cafile {out / 'ca.crt'}",
        f"certfile {out / 'server.crt'}",
        f"keyfile {out / 'server.key'}",
        "tls_version tlsv1.2",
    ]
    if mutual:
        lines.append("require_certificate true")
    return "\n".join(lines)


def run_tls(out: Path, hosts: list[str], clients: list[str]) -> int:
    """`cunxiang deploy tls`: write what was asked into `out` and say how to use it."""
    if not hosts and not clients:
        print(
            "nothing to issue: give --host for the broker's certificate and/or --client NAME", file=sys.stderr
        )
        return 2
    try:
        names = subject_names(hosts)
        for client in clients:
            if not _CLIENT_NAME.match(client) or client in ("ca", "server"):
                raise TlsError(
                    f"a client name is letters, digits, '.', '_' and '-' (not ca or server): {client!r}"
                )
        out.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        authority, new = load_or_create_authority(out, now)
    except (TlsError, ValueError, OSError) as exc:
        print(f"cunxiang deploy tls: {exc}", file=sys.stderr)
        return 2
    print(
        f"{'made a new' if new else 'issuing from the existing'} CA: {out / 'ca.crt'} (keep ca.key offline)"
    )
    if names:
        # A common name is at most 64 characters; clients check the alternative names anyway.
        common_name = hosts[0] if len(hosts[0]) <= 64 else "Cunxiang MQTT broker"
        certificate, key = issue(authority, common_name, now, server_names=names)
        _write_pair(out, "server", certificate, key)
        print(f"broker certificate for {', '.join(hosts)}: {out / 'server.crt'}, {out / 'server.key'}")
    for client in clients:
        certificate, key = issue(authority, client, now)
        _write_pair(out, client, certificate, key)
        print(f"client certificate {client!r}: {out / client}.crt, {out / client}.key")
    print(
        "\nMosquitto (the user it runs as, mosquitto, must be able to read server.key):\n"
        + mosquitto_lines(out, mutual=bool(clients))
        + "\n\nThe controller (and `cunxiang simulate --ca-file`):\n"
        f"CUNXIANG_MQTT_URL=mqtts://USER:PASSWORD@{hosts[0] if hosts else 'BROKER'}:8883\n"
        f"CUNXIANG_MQTT_CA_FILE={out / 'ca.crt'}"
    )
    if clients:
        print(
            f"CUNXIANG_MQTT_CERT_FILE={out / clients[0]}.crt\nCUNXIANG_MQTT_KEY_FILE={out / clients[0]}.key"
        )
    return 0
