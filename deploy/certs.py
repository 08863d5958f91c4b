"""A private CA and the certificates of a deployment's TLS links, made with ``cryptography`` (already a dependency of
aiortc).

One CA signs a server certificate (every nats-server's client and leaf-node listeners, and the gateways' HTTPS) for
the host names and addresses given, and a client certificate that a leaf node presents to the hub (the hub's
leaf-node listener verifies it). Keys are ECDSA P-256 and written with mode 0600.

``mvs local --secure`` makes a fresh set per run in a temp dir for its NATS links; for a cluster,
``python -m deploy.certs --out DIR --host mvs-nats-hub --host ...`` writes the files that become the Secret
``mvs-tls`` (deploy/k8s/README.md).

The gateways' HTTPS, which phones open, is signed by a CA kept in a state directory (:func:`state_dir`) across
runs, so that a person installs it on a phone once: :func:`gateway_certificate` names this host's addresses and
names (:func:`host_names`) besides the ones given.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ifaddr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_DAYS = 365
CA_FILE = "ca.pem"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server-key.pem"
CLIENT_CERT_FILE = "client.pem"
CLIENT_KEY_FILE = "client-key.pem"
CA_KEY_FILE = "ca-key.pem"
GATEWAY_CERT_FILE = "gateway.pem"
GATEWAY_KEY_FILE = "gateway-key.pem"
CA_DAYS = 3650  # the kept CA: installed on phones once
STATE_DIR_ENV = "MVS_STATE_DIR"


@dataclass(frozen=True)
class TlsFiles:
    """Where a server (or a leaf's remote) finds its TLS files: paths as the server sees them (strings, so a
    deployment's config can name paths inside a container)."""

    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str

    @classmethod
    def in_dir(cls, directory: Path | str) -> TlsFiles:
        """The files :func:`generate` writes into ``directory``."""
        d = Path(directory)
        return cls(
            str(d / CA_FILE),
            str(d / SERVER_CERT_FILE),
            str(d / SERVER_KEY_FILE),
            str(d / CLIENT_CERT_FILE),
            str(d / CLIENT_KEY_FILE),
        )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MVStylizer"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def is_address(name: str) -> bool:
    """Whether ``name`` is an IP address (else a host name)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address(h)) if is_address(h) else x509.DNSName(h) for h in hosts]
    )


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    days: int,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    hosts: Sequence[str] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes, secret: bool) -> None:
    if not secret:
        path.write_bytes(data)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others, not even briefly
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def generate(out: Path, hosts: Sequence[str] = LOCAL_HOSTS, days: int = DEFAULT_DAYS) -> TlsFiles:
    """A new CA, a server certificate for ``hosts`` and a client certificate, written into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca_name = _name("MVStylizer private CA")
    ca = _certificate(ca_name, ca_key, ca_name, ca_key, days, ca=True)
    server = _certificate(
        _name(hosts[0]), server_key, ca_name, ca_key, days, usage=ExtendedKeyUsageOID.SERVER_AUTH, hosts=hosts
    )
    client = _certificate(_name("mvs-leaf"), client_key, ca_name, ca_key, days, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    files = TlsFiles.in_dir(out)
    _write(Path(files.ca), ca.public_bytes(serialization.Encoding.PEM), secret=False)
    _write(Path(files.cert), server.public_bytes(serialization.Encoding.PEM), secret=False)
    _write(Path(files.key), _pem_key(server_key), secret=True)
    _write(Path(files.client_cert), client.public_bytes(serialization.Encoding.PEM), secret=False)
    _write(Path(files.client_key), _pem_key(client_key), secret=True)
    return files


def state_dir() -> Path:
    """Where ``mvs local`` keeps its CA: ``$MVS_STATE_DIR``, else ``$XDG_STATE_HOME/mvstylizer``, else
    ``~/.local/state/mvstylizer``."""
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "mvstylizer"


def kept_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA in ``directory`` (``ca.pem``, ``ca-key.pem``), made there (mode 0700, key 0600) if it has none."""
    cert_path, key_path = directory / CA_FILE, directory / CA_KEY_FILE
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} is not an EC private key")
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = _key()
    name = _name("MVStylizer local CA")
    ca = _certificate(name, key, name, key, CA_DAYS, ca=True)
    _write(key_path, _pem_key(key), secret=True)
    _write(cert_path, ca.public_bytes(serialization.Encoding.PEM), secret=False)
    return ca, key


def host_names(extra: Sequence[str] = ()) -> list[str]:
    """``extra``, this host's name, its interface addresses (IPv4, and IPv6 but link-local) and the loopback names,
    without repeats: what a phone may type to reach a gateway here."""
    names = [*extra, socket.gethostname(), *LOCAL_HOSTS]
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            if not ipaddress.ip_address(address).is_link_local:
                names.append(address)
    return list(dict.fromkeys(n for n in names if n and n not in ("0.0.0.0", "::")))


def gateway_certificate(directory: Path, hosts: Sequence[str], days: int = DEFAULT_DAYS) -> tuple[Path, Path]:
    """An HTTPS certificate for ``hosts`` signed by the CA kept in ``directory`` (made if missing), written there
    anew (the host's addresses may have changed); returns (certificate, key) paths."""
    ca, ca_key = kept_ca(directory)
    key = _key()
    cert = _certificate(
        _name(hosts[0]), key, ca.subject, ca_key, days, usage=ExtendedKeyUsageOID.SERVER_AUTH, hosts=hosts
    )
    cert_path, key_path = directory / GATEWAY_CERT_FILE, directory / GATEWAY_KEY_FILE
    _write(key_path, _pem_key(key), secret=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), secret=False)
    return cert_path, key_path


def build_parser() -> argparse.ArgumentParser:
    """CLI of the certificate maker."""
    p = argparse.ArgumentParser(prog="python -m deploy.certs", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="directory to write the PEM files into")
    p.add_argument("--host", action="append", default=None, help="a name or address of the servers (repeatable)")
    p.add_argument("--days", type=int, default=DEFAULT_DAYS, help="validity (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    args = build_parser().parse_args(argv)
    files = generate(args.out, args.host or LOCAL_HOSTS, args.days)
    print(f"wrote {', '.join(Path(f).name for f in vars(files).values())} to {args.out}")


if __name__ == "__main__":
    main()
