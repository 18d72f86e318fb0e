"""Security over real gRPC on loopback: TLS, mutual TLS, tokens, and refusals.

The coordinator runs in this process (a real gRPC server); sites are real `fedtune join`
processes, so exit codes and messages are what a user sees."""

from __future__ import annotations

import subprocess

import pytest

from fedtune.config import ServerSection, load_config
from fedtune.runtime.grpc.security import load_tokens, make_certificates
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
    token = token if token is not None else load_tokens(str(good / "tokens.toml")).get(site, "x")
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
         str(pki / "good" / "tokens.toml")],
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
