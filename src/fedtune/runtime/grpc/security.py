"""TLS material and per-site credentials.

``fedtune certs`` makes a development CA, a coordinator certificate (with the host names and
IPs it serves) and one client certificate per site, signed by that CA, with the
``cryptography`` library; plus one random token per site: ``<site>.token`` holds that site's
token alone (give each site only its own file), and the coordinator's ``tokens.toml`` holds
only salted SHA-256 hashes of them, so a copy of the coordinator's files logs nobody in. The
coordinator checks, on every call, that the site is known and its token matches
(constant-time), and with mutual TLS that the client certificate's common name is the site's
name. A salted hash without key stretching is enough here: the tokens are 192 random bits,
not passwords, so there is no dictionary to try.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import secrets
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ...config import ServerSection, read_toml
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
    hashes = []
    for site in sites:
        key = _key()
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10) if site in expired_sites else None
        cert = _issue(site, key, "fedtune development CA", ca_key, ca=False,
                      days=9 if past else days, client=True, not_before=past)
        (out / f"{site}.pem").write_bytes(cert)
        (out / f"{site}.key").write_bytes(_pem_key(key))
        token = secrets.token_urlsafe(24)
        (out / f"{site}.token").write_text(token + "\n")
        (out / f"{site}.token").chmod(0o600)
        hashes.append(f'"{site}" = "{hash_token(token)}"')
    files["tokens"] = out / "tokens.toml"
    files["tokens"].write_text("# site = salted SHA-256 of its token (the coordinator's file; "
                               "each site gets only its own <site>.token)\n[sites]\n"
                               + "\n".join(hashes) + "\n")
    for path in out.glob("*.key"):
        path.chmod(0o600)
    files["tokens"].chmod(0o600)
    return files


def hash_token(token: str, salt: bytes | None = None) -> str:
    """``sha256:<salt hex>:<digest hex>`` of a token, as the coordinator stores it."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    return f"sha256:{salt.hex()}:{hashlib.sha256(salt + token.encode()).hexdigest()}"


def load_tokens(path: str) -> dict[str, str]:
    """Site -> token from a tokens TOML file (``[sites]`` table)."""
    data = read_toml(path, what="server.tokens file",
                     fix="make one with 'fedtune certs --site NAME ...'")
    sites = data.get("sites")
    if not isinstance(sites, dict) or not all(isinstance(v, str) for v in sites.values()):
        raise ConfigError(f"server.tokens file {path!r} needs a [sites] table of site = \"token\"")
    return dict(sites)


def token_for(path: str, site: str) -> str:
    """A site's own token: from its ``<site>.token`` file (the token alone), or from a
    tokens TOML file that holds plain tokens (the format of fedtune before hashed tokens)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--token-file {path!r} does not exist")
    if p.suffix != ".toml":
        token = p.read_text().strip()
        if not token or len(token) > 1024 or any(c.isspace() for c in token):
            raise ConfigError(f"--token-file {path!r} must hold one token (the file "
                              f"'fedtune certs' wrote as {site}.token)")
        return token
    tokens = load_tokens(path)
    if site not in tokens:
        raise ConfigError(f"site {site!r} has no token in {path}")
    if tokens[site].startswith("sha256:"):
        raise ConfigError(f"{path} is the coordinator's file of token hashes; a site needs "
                          f"its own token file ({site}.token from 'fedtune certs')")
    return tokens[site]


def token_matches(expected: str | None, given: str) -> bool:
    """``given`` is the token whose salted hash (or, in old files, plain text) is
    ``expected``; constant-time in the token."""
    if expected is None:
        return False
    if expected.startswith("sha256:"):
        salt = [*expected.split(":"), ""][1]
        try:
            computed = hash_token(given, bytes.fromhex(salt))
        except ValueError:
            return False
        return hmac.compare_digest(expected.encode(), computed.encode())
    return hmac.compare_digest(expected.encode(), given.encode())


def read_file(path: str, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} = {path!r} does not exist")
    return p.read_bytes()


def listen(server: grpc.Server, settings: ServerSection) -> int:
    """Bind the coordinator's address: TLS (mutual with server.client_ca) or plain."""
    if settings.tls_cert:
        ca = read_file(settings.client_ca, "server.client_ca") if settings.client_ca else None
        creds = grpc.ssl_server_credentials(
            [(read_file(settings.tls_key, "server.tls_key"),
              read_file(settings.tls_cert, "server.tls_cert"))],
            root_certificates=ca, require_client_auth=ca is not None)
        return int(server.add_secure_port(settings.address, creds))
    if settings.client_ca:
        raise ConfigError("server.client_ca (mutual TLS) needs server.tls_cert and "
                          "server.tls_key too")
    return int(server.add_insecure_port(settings.address))
