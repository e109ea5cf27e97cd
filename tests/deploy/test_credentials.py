"""Credentials for a deployment: a server certificate the CA really signed, for the right names,
SuperNode keys in the OpenSSH format Flower reads, private files unreadable to others, and no
overwriting."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedlora.deploy.credentials import main, write_credentials


def test_server_certificate_is_signed_by_the_ca_for_every_host(tmp_path):
    creds = write_credentials(tmp_path, hosts=["link.example.org", "10.0.0.5"], supernodes=2)
    ca = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer does not match
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"link.example.org", "localhost"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("10.0.0.5"),
                                                             ipaddress.ip_address("127.0.0.1")}
    key = serialization.load_pem_private_key(creds.server_key.read_bytes(), password=None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()


def test_supernode_keys_are_openssh_pairs_and_private_files_are_0600(tmp_path):
    creds = write_credentials(tmp_path, supernodes=3)
    assert len(creds.supernode_keys) == 3
    for key_path, pub_path in zip(creds.supernode_keys, creds.supernode_pubs, strict=True):
        key = serialization.load_ssh_private_key(key_path.read_bytes(), password=None)
        pub = serialization.load_ssh_public_key(pub_path.read_bytes())
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert key.public_key().public_numbers() == pub.public_numbers()  # type: ignore[union-attr]
        assert pub_path.read_text().startswith("ecdsa-sha2-nistp384 ")
    for private in [*creds.supernode_keys, creds.server_key, tmp_path / "ca.key"]:
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private


def test_existing_files_are_never_overwritten(tmp_path):
    write_credentials(tmp_path, supernodes=1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(FileExistsError, match=r"ca\.crt"):
        write_credentials(tmp_path, supernodes=2)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # supernode2.* not written


def test_cli_reports_a_clash_as_a_usage_error(tmp_path, capsys):
    main([str(tmp_path), "--supernodes", "1"])
    assert "supernode1.pub" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2 and "already exist" in capsys.readouterr().err
