"""Issue 22: the gate's policies enforcing a key line's options (from=, expiry-time,
models=, max-concurrent), driven socket-free through decide() with signed heads."""

from __future__ import annotations

import json
import time

import pytest
from conftest import GOLDEN

from credential_helper.identity import load_identity
from credential_helper.serve import gate
from credential_helper.serve.authorized_keys import KeyFile
from credential_helper.serve.messages import Answer, Forward, Head, NeedBody

NOW = 1_800_000_000


def key_line(name: str = "ed25519-a") -> str:
    return " ".join((GOLDEN / "keys" / f"{name}.pub").read_text().split()[:2])


def key_file(tmp_path, text: str) -> KeyFile:
    path = tmp_path / "authorized_keys"
    path.write_text(text)
    path.chmod(0o600)
    warnings: list[str] = []
    keys = KeyFile(str(path), warnings.append)
    keys.warnings = warnings
    return keys


def head(keys_dir, method: str, path: str, peer: str = "10.0.0.5", key: str = "ed25519-a", extra=(), body: bytes = b"") -> Head:
    target = f"{path}{'&' if '?' in path else '?'}ts={NOW}"
    authorization = load_identity(str(keys_dir / key)).sign(f"{method},{target}")
    headers = [("Host", "box"), ("Authorization", authorization), *extra]
    if body:
        headers.append(("Content-Length", str(len(body))))
    return Head(method, target, "1.1", tuple(headers), peer)


def policy(keys) -> gate.GatePolicy:
    return gate.GatePolicy(keys, 300, "127.0.0.1:11434", clock=lambda: NOW)


def decided(p, h: Head, body: bytes = b""):
    decision = p.decide(h)
    if isinstance(decision, NeedBody):
        assert len(body) <= decision.limit
        decision = decision.then(body)
    return decision


def chat(model: str) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()


# --- from= ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "peer, admitted",
    [("10.0.0.5", True), ("10.0.9.9", True), ("10.1.0.1", False), ("10.0.0.66", False), ("192.168.1.1", False), ("", False)],
)
def test_from_matches_the_peer_address(tmp_path, keys, peer, admitted):
    keys_file = key_file(tmp_path, f'from="10.0.0.0/16,!10.0.0.66" {key_line()} alice *\n')
    decision = decided(policy(keys_file), head(keys, "GET", "/api/tags", peer=peer))
    if admitted:
        assert isinstance(decision, Forward)
    else:
        assert isinstance(decision, Answer) and decision.status == 403 and "may not connect from" in decision.message


def test_a_clients_own_x_forwarded_for_does_not_count_in_reverse_proxy_mode(tmp_path, keys):
    keys_file = key_file(tmp_path, f'from="10.0.0.0/8" {key_line()} alice *\n')
    decision = decided(
        policy(keys_file), head(keys, "GET", "/api/tags", peer="192.0.2.1", extra=[("X-Forwarded-For", "10.0.0.5")])
    )
    assert isinstance(decision, Answer) and decision.status == 403


def test_a_second_line_of_the_same_key_can_admit_from_elsewhere(tmp_path, keys):
    keys_file = key_file(tmp_path, f'from="10.0.0.0/8" {key_line()} alice *\n{key_line()} alice /api/tags\n')
    p = policy(keys_file)
    assert isinstance(decided(p, head(keys, "GET", "/api/tags", peer="192.0.2.1")), Forward)
    refused = decided(p, head(keys, "POST", "/api/chat", peer="192.0.2.1", body=chat("m")), chat("m"))
    assert isinstance(refused, Answer) and refused.status == 403


# --- expiry-time ------------------------------------------------------------------------------


def test_an_expired_line_is_refused_saying_when(tmp_path, keys):
    expired = time.strftime("%Y%m%d%H%M", time.gmtime(NOW - 60))
    later = time.strftime("%Y%m%d%H%M", time.gmtime(NOW + 3600))
    refused = decided(
        policy(key_file(tmp_path, f'expiry-time="{expired}Z" {key_line()} alice *\n')), head(keys, "GET", "/api/tags")
    )
    assert isinstance(refused, Answer) and refused.status == 403 and "expired at " in refused.message
    assert time.strftime("%Y-%m-%d %H:%M", time.gmtime(NOW - 60)) in refused.message
    (tmp_path / "authorized_keys").unlink()
    admitted = decided(
        policy(key_file(tmp_path, f'expiry-time="{later}Z" {key_line()} alice *\n')), head(keys, "GET", "/api/tags")
    )
    assert isinstance(admitted, Forward)


# --- models= ----------------------------------------------------------------------------------


@pytest.fixture
def restricted(tmp_path):
    return key_file(tmp_path, f'models="qwen3*,!qwen3:235b" {key_line()} alice *\n{key_line("ed25519-b")} bob *\n')


def test_a_line_without_options_asks_for_no_body(restricted, keys):
    decision = policy(restricted).decide(head(keys, "POST", "/api/chat", key="ed25519-b", body=chat("anything")))
    assert isinstance(decision, Forward) and decision.release is None and decision.filter_answer is None


@pytest.mark.parametrize(
    "model, status",
    [("qwen3:8b", None), ("qwen3", None), ("QWEN3:8B", None), ("qwen3:235b", 403), ("llama3", 403), ("gemma3:27b", 403)],
)
def test_models_on_a_chat(restricted, keys, model, status):
    body = chat(model)
    decision = decided(policy(restricted), head(keys, "POST", "/api/chat", body=body), body)
    if status is None:
        assert isinstance(decision, Forward), decision
    else:
        assert isinstance(decision, Answer) and decision.status == status
        assert "line 1" in decision.message and "qwen3*" in decision.message and "bob" not in decision.message


def test_an_endpoint_the_gate_cannot_name_grants_a_restricted_key_nothing(restricted, keys):
    decision = decided(policy(restricted), head(keys, "POST", "/api/experimental/unknown", body=b"{}"), b"{}")
    assert isinstance(decision, Answer) and decision.status == 403


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "gzip, identity"])
def test_a_compressed_request_body_is_400(restricted, keys, encoding):
    import gzip as gz

    body = gz.compress(chat("qwen3:8b"))
    decision = decided(
        policy(restricted), head(keys, "POST", "/api/chat", body=body, extra=[("Content-Encoding", encoding)]), body
    )
    assert isinstance(decision, Answer) and decision.status == 400


def test_a_listing_is_filtered_for_a_restricted_key(restricted, keys):
    decision = decided(policy(restricted), head(keys, "GET", "/api/tags", extra=[("Accept-Encoding", "gzip")]))
    assert isinstance(decision, Forward) and decision.filter_answer is not None
    assert not any(name.lower() == "accept-encoding" for name, _ in decision.headers)
    listing = json.dumps(
        {
            "models": [
                {"name": "qwen3:8b", "model": "qwen3:8b"},
                {"name": "qwen3:235b", "model": "qwen3:235b"},
                {"name": "llama3:latest", "model": "llama3:latest"},
            ]
        }
    ).encode()
    shown = json.loads(decision.filter_answer(200, listing))
    assert [m["name"] for m in shown["models"]] == ["qwen3:8b"]
    # Not 2xx: the status stays, the text (which can name a model, manifest.go) does not.
    # Break caught: an error answer passed unfiltered.
    for status in (500, 404, 302):
        assert b"llama3" not in decision.filter_answer(status, listing)
        assert b"llama3" not in decision.filter_answer(
            status, b'{"error":"/m/manifests/registry.ollama.ai/library/llama3/8b denied"}'
        )


def test_a_show_of_an_allowed_model_names_no_model_the_key_may_not_use(restricted, keys):
    # Break caught: /api/show forwarded unfiltered (its details.parent_model named llama3).
    body = json.dumps({"model": "qwen3:8b"}).encode()
    decision = decided(policy(restricted), head(keys, "POST", "/api/show", body=body, extra=[("Accept-Encoding", "gzip")]), body)
    assert isinstance(decision, Forward) and decision.filter_answer is not None
    assert not any(name.lower() == "accept-encoding" for name, _ in decision.headers)
    answer = {
        "modelfile": "# FROM qwen3:8b\n\nFROM /root/.ollama/models/blobs/sha256-1\n",
        "details": {"parent_model": "llama3:latest", "family": "qwen3"},
        "model_info": {},
    }
    out = json.loads(decision.filter_answer(200, json.dumps(answer).encode()))
    assert out == dict(answer, details={"parent_model": "", "family": "qwen3"})
    parent_allowed = dict(answer, details={"parent_model": "qwen3:latest"})
    assert json.loads(decision.filter_answer(200, json.dumps(parent_allowed).encode())) == parent_allowed
    bob = decided(policy(restricted), head(keys, "POST", "/api/show", key="ed25519-b", body=body), body)
    assert isinstance(bob, Forward) and bob.filter_answer is None  # a key without models= sees Ollama's answer


def test_a_copy_between_models_of_two_different_lines_is_refused_not_a_crash(tmp_path, keys):
    # Each model has a line, no line has both: the request is refused (one line must allow every
    # model a request names). Break caught: next() over no denied name raised StopIteration, and the
    # engine dropped the connection with "internal error".
    keys_file = key_file(tmp_path, f'models="small*" {key_line()} alice *\nmodels="qwen*" {key_line()} alice *\n')
    body = json.dumps({"source": "small", "destination": "qwen3"}).encode()
    decision = decided(policy(keys_file), head(keys, "POST", "/api/copy", body=body), body)
    assert isinstance(decision, Answer) and (decision.status, decision.reason) == (403, "model"), decision
    assert "'small:latest', 'qwen3:latest' together" in decision.message and decision.model == "small:latest,qwen3:latest"
    for model in ("small", "qwen3"):  # each alone is allowed
        alone = json.dumps({"model": model, "messages": []}).encode()
        assert isinstance(decided(policy(keys_file), head(keys, "POST", "/api/chat", body=alone), alone), Forward)


# --- max-concurrent ------------------------------------------------------------------------------


def test_max_concurrent_counts_a_keys_requests_in_flight_and_the_tightest_line_wins(tmp_path, keys):
    keys_file = key_file(tmp_path, f'max-concurrent=3 {key_line()} alice /api/tags\nmax-concurrent="2" {key_line()} alice *\n')
    p = policy(keys_file)
    first, second = (decided(p, head(keys, "GET", "/api/tags")) for _ in range(2))
    assert isinstance(first, Forward) and isinstance(second, Forward)
    third = decided(p, head(keys, "GET", "/api/tags"))
    assert isinstance(third, Answer) and third.status == 429 and ("Retry-After", "1") in third.headers
    other = decided(p, head(keys, "GET", "/api/tags", key="ed25519-b"))
    assert isinstance(other, Answer) and other.status == 401  # bob is not in this file: his count is not alice's
    first.release()
    first.release()  # idempotent
    assert isinstance(decided(p, head(keys, "GET", "/api/tags")), Forward)
    assert isinstance(decided(p, head(keys, "GET", "/api/tags")), Answer)


# --- --auth-only ------------------------------------------------------------------------------


def auth_head(keys, method, path, peer, extra=()):
    h = head(keys, method, path, peer=peer)
    authorization = dict(h.headers)["Authorization"]
    headers = (
        ("Host", "gate"),
        ("Authorization", authorization),
        ("X-Original-Method", method),
        ("X-Original-URI", h.target),
        *extra,
    )
    return Head("GET", "/_gate", "1.1", headers, peer)


@pytest.mark.parametrize(
    "peer, forwarded, status",
    [
        ("127.0.0.1", "10.0.0.5", 204),  # the trusted front reports an allowed client
        ("127.0.0.1", "10.0.0.5, 192.0.2.7", 403),  # the last hop is what the front saw; the first is the client's claim
        ("127.0.0.1", "192.0.2.7, 10.0.0.5", 204),
        ("192.0.2.9", "10.0.0.5", 403),  # not a trusted front: its header is not believed
        ("127.0.0.1", None, 403),
        ("127.0.0.1", "10.0.0.5:443", 403),
    ],
)
def test_auth_only_reads_the_address_only_from_a_trusted_front(tmp_path, keys, peer, forwarded, status):
    keys_file = key_file(tmp_path, f'from="10.0.0.0/8" {key_line()} alice *\n')
    p = gate.AuthOnlyPolicy(keys_file, 300, clock=lambda: NOW, trusted_fronts=gate.parse_trusted_fronts("127.0.0.1/32"))
    extra = [("X-Forwarded-For", forwarded)] if forwarded is not None else []
    assert p.decide(auth_head(keys, "GET", "/api/tags", peer, extra)).status == status


def test_auth_only_lines_it_cannot_enforce_grant_nothing(tmp_path, keys):
    keys_file = key_file(tmp_path, f'models="qwen3*" {key_line()} alice *\nmax-concurrent=1 {key_line("ed25519-b")} bob *\n')
    p = gate.AuthOnlyPolicy(keys_file, 300, clock=lambda: NOW)
    assert p.decide(auth_head(keys, "GET", "/api/tags", "127.0.0.1")).status == 403


# --- every recorded request of Ollama's own code (golden/models.json) -----------------------------

VECTORS = [v for v in json.loads((GOLDEN / "models.json").read_text())["vectors"] if v.get("acts_on")]


def test_every_request_that_names_a_model_is_refused_for_a_key_that_may_use_none_of_them(tmp_path, keys):
    """Each request Ollama's code (fb30760) acts on a model for, sent by a key whose models=
    matches none of those models: refused (400, 403 or 413), never forwarded."""
    keys_file = key_file(tmp_path, f'models="zz-none-such*" {key_line()} alice *\n')
    p = policy(keys_file)
    forwarded = []
    for vector in VECTORS:
        method, target = vector["endpoint"].split(" ", 1)
        body = vector.get("body", "").encode("utf-8", "surrogatepass") if vector.get("body") is not None else b""
        extra = [(name, value) for name, value in (vector.get("headers") or {}).items()]
        if vector.get("content_type"):
            extra.append(("Content-Type", vector["content_type"]))
        decision = decided(p, head(keys, method, target, extra=extra, body=body), body)
        if not (isinstance(decision, Answer) and decision.status in (400, 403, 413)):
            forwarded.append(vector["id"])
    assert forwarded == [] and len(VECTORS) > 1000


@pytest.mark.parametrize("encoding", ["gzip", "zstd", "identity, gzip"])
def test_a_body_labelled_compressed_is_400_even_when_it_reads_as_an_allowed_json(restricted, keys, encoding):
    body = chat("qwen3:8b")  # plain JSON naming an allowed model: the label alone is refused
    decision = decided(
        policy(restricted), head(keys, "POST", "/api/chat", body=body, extra=[("Content-Encoding", encoding)]), body
    )
    assert isinstance(decision, Answer) and decision.status == 400


def test_a_restricted_keys_heartbeat_and_version_pass(restricted, keys):
    """Ollama's CLI sends HEAD / before every command (cmd/cmd.go checkServerHeartbeat)."""
    for method, path in (("HEAD", "/"), ("GET", "/api/version")):
        assert isinstance(decided(policy(restricted), head(keys, method, path)), Forward)


def test_a_wildcard_lines_max_concurrent_counts_every_key_it_serves_together(tmp_path, keys):
    # Anyone can make a fresh key: counted per key, a '* *' line's limit would be no limit.
    # Break caught: the count kept per fingerprint (bob got a slot while alice held the line's only one).
    keys_file = key_file(tmp_path, 'max-concurrent="3" * * * *\nmax-concurrent=1 * * guests /api/tags\n')
    p = policy(keys_file)
    alice = decided(p, head(keys, "GET", "/api/tags"))
    assert isinstance(alice, Forward)
    bob = decided(p, head(keys, "GET", "/api/tags", key="ed25519-b"))
    assert isinstance(bob, Answer) and (bob.status, bob.reason) == (429, "concurrency"), bob
    assert "line 2 (for any key) already has 1 request(s) in flight" in bob.message
    # alice holds one slot on each line; bob's refusal gave back the slot it took on line 1
    assert sorted(p.in_flight._counts.values()) == [1, 1]
    alice.release()
    assert not any(p.in_flight._counts.values())
    assert isinstance(decided(p, head(keys, "GET", "/api/tags", key="ed25519-b")), Forward)


def test_a_wildcard_lines_max_concurrent_is_for_keys_without_a_line_of_their_own(tmp_path, keys):
    keys_file = key_file(tmp_path, f"{key_line()} alice *\nmax-concurrent=1 * * guests /api/tags\n")
    p = policy(keys_file)
    alice = [decided(p, head(keys, "GET", "/api/tags")) for _ in range(2)]
    assert all(isinstance(d, Forward) for d in alice)
    guest = [decided(p, head(keys, "GET", "/api/tags", key="ed25519-b")) for _ in range(2)]
    assert isinstance(guest[0], Forward) and isinstance(guest[1], Answer) and guest[1].status == 429


def test_a_wildcard_lines_count_survives_a_reload_that_moves_the_line():
    # A comment added above the line (then SIGHUP) must not reset the requests it has in flight.
    # Break caught: the counter named by line number (a second request got in past max-concurrent=1).
    from credential_helper.serve.authorized_keys import Grant
    from credential_helper.serve.key_options import parse_options
    from credential_helper.serve.restrict import concurrency_counts

    options = parse_options("max-concurrent=1")
    before = Grant("guests", "SHA256:x", 1, frozenset({"*"}), True, options)
    after = Grant("guests", "SHA256:y", 2, frozenset({"*"}), True, options)
    (name_before, limit, _), (name_after, _, whose) = concurrency_counts([before], "SHA256:x") + concurrency_counts(
        [after], "SHA256:y"
    )
    assert name_before == name_after and limit == 1
    assert whose == "line 2 (for any key)"  # the refusal still says where the line is now
    other = Grant("others", "SHA256:y", 2, frozenset({"*"}), True, options)
    assert concurrency_counts([other], "SHA256:y")[0][0] != name_before  # another line, another count
