"""TLS material and per-site credentials.

``fedtune certs`` makes a development CA, a coordinator certificate (with the host names and
IPs it serves) and one client certificate per site, signed by that CA, with the
``cryptography`` library; plus a tokens file (one random token per site). The coordinator
checks, on every call, that the site is known and its token matches (constant-time), and with
mutual TLS that the client certificate's common name is the site's name.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ...config import read_toml
from ...errors import ConfigError


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedtune"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _issue(subject_cn: str, key: ec.EllipticCurvePrivateKey, issuer_cn: str,
           issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, days: float,
           sans: list[str] | None = None, client: bool = False,
           not_before: dt.datetime | None = None) -> bytes:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = (x509.CertificateBuilder().subject_name(_name(subject_cn))
               .issuer_name(_name(issuer_cn)).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(start)
               .not_valid_after(start + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        names: list[x509.GeneralName] = []
        for s in sans:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(s)))
            except ValueError:
                names.append(x509.DNSName(s))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


def make_certificates(out: Path, *, sites: list[str], hosts: list[str], days: float = 365,
                      expired_sites: tuple[str, ...] = ()) -> dict[str, Path]:
    """Write ca.pem, coordinator.pem/.key, <site>.pem/.key and tokens.toml into ``out``.

    Sites named in ``expired_sites`` get a certificate that expired yesterday (for tests of
    the refusal path)."""
    out.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    files = {"ca": out / "ca.pem"}
    files["ca"].write_bytes(_issue("fedtune development CA", ca_key, "fedtune development CA",
                                   ca_key, ca=True, days=days))
    server_key = _key()
    files["coordinator_cert"] = out / "coordinator.pem"
    files["coordinator_key"] = out / "coordinator.key"
    files["coordinator_cert"].write_bytes(_issue("coordinator", server_key,
                                                 "fedtune development CA", ca_key, ca=False,
                                                 days=days, sans=hosts))
    files["coordinator_key"].write_bytes(_pem_key(server_key))
    tokens = []
    for site in sites:
        key = _key()
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10) if site in expired_sites else None
        cert = _issue(site, key, "fedtune development CA", ca_key, ca=False,
                      days=9 if past else days, client=True, not_before=past)
        (out / f"{site}.pem").write_bytes(cert)
        (out / f"{site}.key").write_bytes(_pem_key(key))
        tokens.append(f'"{site}" = "{secrets.token_urlsafe(24)}"')
    files["tokens"] = out / "tokens.toml"
    files["tokens"].write_text("# site = token; give each site only its own line\n[sites]\n"
                               + "\n".join(tokens) + "\n")
    for path in out.glob("*.key"):
        path.chmod(0o600)
    files["tokens"].chmod(0o600)
    return files


def load_tokens(path: str) -> dict[str, str]:
    """Site -> token from a tokens TOML file (``[sites]`` table)."""
    data = read_toml(path, what="server.tokens file",
                     fix="make one with 'fedtune certs --site NAME ...'")
    sites = data.get("sites")
    if not isinstance(sites, dict) or not all(isinstance(v, str) for v in sites.values()):
        raise ConfigError(f"server.tokens file {path!r} needs a [sites] table of site = \"token\"")
    return dict(sites)


def token_for(path: str, site: str) -> str:
    """A site's own token from a tokens file."""
    tokens = load_tokens(path)
    if site not in tokens:
        raise ConfigError(f"site {site!r} has no token in {path}")
    return tokens[site]


def token_matches(expected: str | None, given: str) -> bool:
    return expected is not None and hmac.compare_digest(expected.encode(), given.encode())


def read_file(path: str, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} = {path!r} does not exist")
    return p.read_bytes()
