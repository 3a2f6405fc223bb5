"""A certificate authority made in the test (cryptography): root, optional intermediate, leaves."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lsvm tests")])


@dataclass
class Issued:
    cert: x509.Certificate
    key: object

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)


@dataclass
class TestCA:
    __test__ = False  # not a test class, whatever its name
    root: Issued
    intermediate: Issued

    @classmethod
    def create(cls, name: str = "lsvm test") -> "TestCA":
        now = dt.datetime.now(dt.timezone.utc)
        root_key = _key()
        root = (x509.CertificateBuilder().subject_name(_name(f"{name} root")).issuer_name(_name(f"{name} root"))
                .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
                .sign(root_key, hashes.SHA256()))
        inter_key = _key()
        inter = (x509.CertificateBuilder().subject_name(_name(f"{name} intermediate")).issuer_name(root.subject)
                 .public_key(inter_key.public_key()).serial_number(x509.random_serial_number())
                 .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1825))
                 .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                 .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
                 .add_extension(x509.SubjectKeyIdentifier.from_public_key(inter_key.public_key()), critical=False)
                 .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
                 .sign(root_key, hashes.SHA256()))
        return cls(Issued(root, root_key), Issued(inter, inter_key))

    def leaf(self, *names: str, days: int = 90, expired: bool = False, ocsp_url: str | None = None,
             key=None) -> Issued:
        now = dt.datetime.now(dt.timezone.utc)
        start, end = ((now - dt.timedelta(days=days + 10), now - dt.timedelta(days=10)) if expired
                      else (now - dt.timedelta(hours=1), now + dt.timedelta(days=days)))
        key = key or _key()
        sans = [x509.IPAddress(ipaddress.ip_address(n)) if n.replace(".", "").isdigit() else x509.DNSName(n)
                for n in names]
        builder = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(self.intermediate.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.intermediate.key.public_key()), critical=False))
        if ocsp_url:
            builder = builder.add_extension(x509.AuthorityInformationAccess(
                [x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]),
                critical=False)
        return Issued(builder.sign(self.intermediate.key, hashes.SHA256()), key)

    def chain_pem(self, leaf: Issued) -> bytes:
        """What a CA hands out: the leaf, then the intermediate."""
        return leaf.cert_pem + self.intermediate.cert_pem

    @property
    def root_pem(self) -> bytes:
        return self.root.cert_pem
