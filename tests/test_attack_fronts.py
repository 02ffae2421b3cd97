"""A hostile review of today's work: from= behind the README's front servers (real nginx, Caddy)."""

from __future__ import annotations

import pytest
from faults import CertificateAuthority
from frontends import Gate, Relay
from test_frontends import FRONTS, Chain, local_ollama  # noqa: F401  (the fixture)

pytestmark = pytest.mark.interop  # real nginx and Caddy


@pytest.fixture(params=sorted(FRONTS))
def office_only(request, tmp_path, env, keys, local_ollama):  # noqa: F811
    """alice may connect from 10.9.9.9 only; the gate trusts the front's X-Forwarded-For."""
    path = tmp_path / "authorized_keys"
    a = (keys / "ed25519-a.pub").read_text().split()
    path.write_text(f'from="10.9.9.9" {a[0]} {a[1]} alice *\n')
    path.chmod(0o600)
    gate = Gate(path, env, "--trusted-front", "127.0.0.1/32")
    relay = Relay(gate.port)
    front = None
    try:
        front = FRONTS[request.param](
            tmp_path / request.param, CertificateAuthority(tmp_path), local_ollama.server.server_address[1], relay.port
        )
        yield Chain(front, gate, relay, local_ollama, keys)
    finally:
        if front is not None:
            front.stop()
        relay.stop()
        gate.stop()


def test_a_client_cannot_claim_the_allowed_address_through_the_readmes_front(office_only):
    # The README says the front must set X-Forwarded-For for --trusted-front, but its own
    # nginx block did not: nginx's auth_request copies the client's headers, so the client's
    # "X-Forwarded-For: 10.9.9.9" reached the gate as the front's report.
    target, authorization = office_only.signed("GET", "/api/tags")
    status, body = office_only.front.request("GET", target, {"Authorization": authorization, "X-Forwarded-For": "10.9.9.9"})[:2]
    assert status == 403, (status, body)
    office_only.assert_nothing_reached_ollama()
