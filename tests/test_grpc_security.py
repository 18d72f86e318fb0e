"""Security over real gRPC on loopback: TLS, mutual TLS, tokens, and refusals.

The coordinator runs in this process (a real gRPC server); sites are real `fedtune join`
processes, so exit codes and messages are what a user sees."""

from __future__ import annotations

import subprocess

import pytest

from fedtune.config import ServerSection, load_config
from fedtune.runtime.grpc.security import load_tokens, make_certificates, token_for
from fedtune.runtime.grpc.server import GrpcRuntime

from .conftest import FEDTUNE
from .deployment import free_port


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    make_certificates(root / "good", sites=["node-0", "node-1", "evil"],
                      hosts=["127.0.0.1", "localhost"], expired_sites=("node-1",))
    make_certificates(root / "other", sites=["node-0"], hosts=["127.0.0.1"])
    return root


@pytest.fixture
def coordinator(pki):
    good = pki / "good"
    address = f"127.0.0.1:{free_port()}"
    settings = ServerSection(address=address, tls_cert=str(good / "coordinator.pem"),
                             tls_key=str(good / "coordinator.key"), client_ca=str(good / "ca.pem"),
                             tokens=str(good / "tokens.toml"), wait_for_sites_s=60)
    cfg = load_config(None, ["data.num_nodes=2", "run.rounds=1"])
    runtime = GrpcRuntime(settings, welcome=cfg.model_dump(exclude={"server"}),
                          expected_bytes=2**20)
    yield runtime, address
    runtime.close()


def _join(pki, address, site, *, ca="good", cert_of=None, token=None, attempts=2):
    good = pki / "good"
    cert_of = cert_of or site
    own = good / f"{site}.token"
    token = token if token is not None else (own.read_text().strip() if own.exists() else "x")
    return subprocess.run(
        [FEDTUNE, "join", "--server", address, "--site", site, "--data", "partition:node-0",
         "--ca", str(pki / ca / "ca.pem"), "--cert", str(good / f"{cert_of}.pem"),
         "--key", str(good / f"{cert_of}.key"), "--token", token,
         "--max-attempts", str(attempts)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


REFUSALS = [
    ("wrong CA", dict(site="node-0", ca="other"), "gave up after 2 attempts"),
    ("expired certificate", dict(site="node-1"), "gave up after 2 attempts"),
    ("wrong token", dict(site="node-0", token="not-the-token"), "refused site 'node-0'"),
    ("unknown site", dict(site="stranger", cert_of="node-0"), "refused site 'stranger'"),
    ("certificate of another site", dict(site="node-0", cert_of="evil"),
     "not issued to site 'node-0'"),
]


@pytest.mark.parametrize(("case", "kw", "message"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_sites_get_a_clear_error_and_the_coordinator_serves_on(
        pki, coordinator, case, kw, message):
    runtime, address = coordinator
    proc = _join(pki, address, **kw)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last, last
    assert "Traceback" not in proc.stderr
    assert runtime.node_ids == []
    # the coordinator still serves a legitimate site
    site = subprocess.Popen(
        [FEDTUNE, "join", "--server", address, "--site", "node-0", "--data", "partition:node-0",
         "--ca", str(pki / "good" / "ca.pem"), "--cert", str(pki / "good" / "node-0.pem"),
         "--key", str(pki / "good" / "node-0.key"), "--token-file",
         str(pki / "good" / "node-0.token")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert runtime.wait_for_nodes(1) == ["node-0"]
    finally:
        runtime.close()
        assert site.wait(timeout=60) == 0, site.stderr.read()[-2000:] if site.stderr else ""


def test_server_refuses_to_start_without_any_authentication():
    from fedtune.errors import FedtuneError

    cfg = load_config(None, [])
    with pytest.raises(FedtuneError, match=r"server\.tokens"):
        GrpcRuntime(ServerSection(address=f"127.0.0.1:{free_port()}"),
                    welcome=cfg.model_dump(), expected_bytes=1024)


def test_certs_give_each_site_only_its_token_and_the_coordinator_only_salted_hashes(pki):
    good = pki / "good"
    hashes = load_tokens(str(good / "tokens.toml"))
    tokens = {site: (good / f"{site}.token").read_text().strip() for site in hashes}
    assert sorted(hashes) == ["evil", "node-0", "node-1"]
    for site, token in tokens.items():
        assert hashes[site].startswith("sha256:") and token not in hashes[site]
        assert token not in (good / "tokens.toml").read_text()
        assert token_for(str(good / f"{site}.token"), site) == token
    # two sites' hashes use different salts, and a token matches only its own site's hash
    from fedtune.runtime.grpc.security import token_matches

    assert token_matches(hashes["node-0"], tokens["node-0"])
    assert not token_matches(hashes["node-0"], tokens["node-1"])
    assert not token_matches(hashes["node-0"], hashes["node-0"])
    # the coordinator's file is refused as a site's token file, with the fix named
    from fedtune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"node-0\.token"):
        token_for(str(good / "tokens.toml"), "node-0")


def test_serve_warns_when_tokens_are_used_without_a_client_ca(pki, caplog):
    good = pki / "good"
    cfg = load_config(None, ["data.num_nodes=2"])
    with caplog.at_level("WARNING", logger="fedtune.server"):
        runtime = GrpcRuntime(ServerSection(address=f"127.0.0.1:{free_port()}",
                                            tokens=str(good / "tokens.toml")),
                              welcome=cfg.model_dump(), expected_bytes=1024)
        runtime.close()
    assert "without server.client_ca" in caplog.text
