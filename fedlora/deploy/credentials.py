"""TLS certificates and SuperNode authentication keys for a fedlora deployment.

    python -m fedlora.deploy.credentials certs --hosts superlink.example.org,10.0.0.5 --supernodes 3

writes, into ``certs/``:

- ``ca.crt`` / ``ca.key``: a private certificate authority (EC P-384). SuperNodes and the ``flwr``
  CLI trust the SuperLink through ``ca.crt`` (``--root-certificates``, ``root-certificates``).
- ``server.pem`` / ``server.key``: the SuperLink's certificate, signed by the CA, valid for every
  name and address in ``--hosts``. ``127.0.0.1`` and ``localhost`` are always included: the
  SuperLink's own executor dials it on loopback even when it listens on ``0.0.0.0``.
- ``supernode<i>.key`` / ``supernode<i>.pub``: one EC P-384 key pair per SuperNode in OpenSSH
  format. The private key stays on its machine (``--auth-supernode-private-key``); the public key
  is registered with ``flwr supernode register`` so that only known nodes can join.

Private keys are written with mode 0600, and existing files are never overwritten (a rerun that
would replace a key in use is an error, not a surprise). For production, use your organisation's
CA instead of ``ca.key`` and keep that key offline.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class Credentials:
    """Where :func:`write_credentials` put each file."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    supernode_keys: list[Path]
    supernode_pubs: list[Path]


def _pem_private(key: ec.EllipticCurvePrivateKey, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(path: Path, data: bytes, private: bool) -> None:
    # Private keys are created 0600 from the start, never briefly world-readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_credentials(out_dir: Path, hosts: Sequence[str] = (), supernodes: int = 2,
                      days: int = 365) -> Credentials:
    """Create a CA, a SuperLink certificate for ``hosts`` (+ loopback) and ``supernodes`` key pairs."""
    if supernodes < 0:
        raise ValueError(f"supernodes: expected >= 0, got {supernodes}")
    if days < 1:
        raise ValueError(f"days: expected >= 1, got {days}")
    names = list(dict.fromkeys([h.strip() for h in hosts if h.strip()] + list(LOOPBACK)))
    out = Path(out_dir)
    targets = ["ca.crt", "ca.key", "server.pem", "server.key"] + [
        f"supernode{i}.{ext}" for i in range(1, supernodes + 1) for ext in ("key", "pub")]
    clash = [t for t in targets if (out / t).exists()]
    if clash:  # checked before writing anything, so a refused call leaves no half-set behind
        raise FileExistsError(f"{out}: {', '.join(clash)} already exist; choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)  # tolerate clock skew

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedlora deployment CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    creds = Credentials(out / "ca.crt", out / "server.pem", out / "server.key", [], [])
    _write(creds.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(out / "ca.key", _pem_private(ca_key, serialization.PrivateFormat.PKCS8), private=True)
    _write(creds.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(creds.server_key, _pem_private(server_key, serialization.PrivateFormat.PKCS8), private=True)
    for i in range(1, supernodes + 1):
        key = ec.generate_private_key(ec.SECP384R1())
        creds.supernode_keys.append(out / f"supernode{i}.key")
        creds.supernode_pubs.append(out / f"supernode{i}.pub")
        _write(creds.supernode_keys[-1], _pem_private(key, serialization.PrivateFormat.OpenSSH), private=True)
        _write(creds.supernode_pubs[-1], key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n", private=False)
    return creds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedlora.deploy.credentials",
                                     description="TLS certificates and SuperNode keys for a deployment")
    parser.add_argument("out_dir", type=Path, help="directory for the files (created; never overwritten)")
    parser.add_argument("--hosts", default="", help="comma-separated DNS names / IPs of the SuperLink")
    parser.add_argument("--supernodes", type=int, default=2, help="how many SuperNode key pairs (default 2)")
    parser.add_argument("--days", type=int, default=365, help="certificate validity in days (default 365)")
    args = parser.parse_args(argv)
    try:
        creds = write_credentials(args.out_dir, args.hosts.split(","), args.supernodes, args.days)
    except (FileExistsError, ValueError) as err:
        parser.error(str(err))
    print(f"CA certificate:      {creds.ca_cert}")
    print(f"SuperLink cert/key:  {creds.server_cert} {creds.server_key}")
    for key, pub in zip(creds.supernode_keys, creds.supernode_pubs, strict=True):
        print(f"SuperNode key/pub:   {key} {pub}")


if __name__ == "__main__":
    main()
