"""The intermediary's pure parts with no socket: the message rules h11 leaves to
us, and the proxy's and the gate's policies as functions of a request head."""

from __future__ import annotations

import json
import os

import pytest

from conftest import GOLDEN, load_vectors
from credential_helper import protocol
from credential_helper.identity import load_identity
from credential_helper.serve import gate, sign
from credential_helper.serve.authorized_keys import KeyFile
from credential_helper.serve.messages import Answer, Forward, Head, end_to_end, head_problem, request_has_body


def head(method="POST", target="/api/me", version="1.1", **fields) -> Head:
    headers = tuple((name.replace("_", "-"), value) for name, value in fields.items())
    return Head(method, target, version, headers)


# --- head_problem ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"GET / HTTP/1.1\nHost: x\n\n", "bare LF"),
        (b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", "bare LF"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: 1\r\n folded\r\n\r\n", "folded"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: 1\r\n\tfolded\r\n\r\n", "folded"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40000 + b"\r\n\r\n", "too large"),
    ],
)
def test_heads_h11_accepts_but_an_intermediary_refuses(raw, why):
    assert why in head_problem(raw, head("GET", "/", Host="x"))


def test_a_clean_head_has_no_problem_and_its_body_is_ignored():
    raw = b"POST /api/me HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\na\nb\n"
    assert head_problem(raw, head(Host="x", Content_Length="4")) is None


@pytest.mark.parametrize(
    "parsed, why",
    [
        (head(Host="x", Content_Length="5", Transfer_Encoding="chunked"), "both Content-Length and Transfer-Encoding"),
        (head(version="1.0", Transfer_Encoding="chunked"), "HTTP/1.0"),
        (Head("GET", "/", "1.1", (("Host", "x"), ("host", "y"))), "more than one Host"),
        (head(target="http://evil.example/api/me", Host="x"), "origin form"),
        (head(target="*", Host="x"), "origin form"),
        (head(version="2.0", Host="x"), "version"),
        (Head("GET", "/", "1.1", tuple(("X-A", "1") for _ in range(101))), "too many"),
    ],
)
def test_framing_and_form_rules(parsed, why):
    assert why in head_problem(b"GET / HTTP/1.1\r\n\r\n", parsed)


def test_end_to_end_drops_hop_by_hop_framing_and_connection_named_fields_in_any_case():
    fields = [
        ("Connection", "X-Hop, KEEP-ALIVE"),
        ("x-hop", "1"),
        ("Keep-Alive", "5"),
        ("Upgrade", "h2c"),
        ("TE", "trailers"),
        ("Content-Length", "3"),
        ("Transfer-Encoding", "chunked"),
        ("Proxy-Authorization", "Basic x"),
        ("X-Kept", "yes"),
    ]
    assert end_to_end(fields) == [("X-Kept", "yes")]
    assert end_to_end([("Cookie", "a"), ("X-Kept", "yes")], frozenset({"cookie"})) == [("X-Kept", "yes")]


@pytest.mark.parametrize("name", ["X_Ollama_User", "x_ollama-key", "X-Ollama_Key", "X_FORWARDED_FOR", "x_real_ip"])
def test_the_gates_strip_rule_reads_underscore_as_dash(name, key_file):
    # Issue 21: one strip rule (messages.field_key) for every policy, always folding '_'.
    policy = gate.GatePolicy(key_file, 300, "127.0.0.1:11434")
    decision = policy.decide(Head("HEAD", "/", "1.1", (("Host", "gate"), (name, "forged"))))
    assert isinstance(decision, Forward)
    assert "forged" not in [value for _, value in decision.headers]


@pytest.mark.parametrize("name", ["X_Api_Key", "Proxy_Authorization", "COOKIE", "x_real_ip", "Transfer_Encoding"])
def test_the_proxys_strip_rule_reads_underscore_as_dash(name):
    policy, _ = proxy_policy()
    fields = (("Host", "127.0.0.1:11470"), ("Authorization", f"Bearer {TOKEN}"), (name, "och-secret-copy"))
    decision = policy.decide(Head("POST", "/api/me", "1.1", fields))
    assert isinstance(decision, Forward)
    assert "och-secret-copy" not in [value for _, value in decision.headers]


def test_a_connection_token_with_underscores_names_its_field():
    assert end_to_end([("Connection", "x_hop"), ("X-Hop", "1"), ("X-Kept", "yes")]) == [("X-Kept", "yes")]


@pytest.mark.parametrize(
    "fields, expected",
    [({}, False), ({"Content_Length": "0"}, False), ({"Content_Length": "3"}, True), ({"Transfer_Encoding": "chunked"}, True)],
)
def test_request_has_body(fields, expected):
    assert request_has_body(head(**fields)) is expected


def test_answers_are_one_line_json_with_equal_error_and_status():
    body = Answer(401, "no").payload()
    assert body.endswith(b"}\n") and body.count(b"\n") == 1 and json.loads(body) == {"error": "no", "status": "no"}
    assert Answer(204).payload() == b""


# --- the proxy's policy ---------------------------------------------------------------------


class FakeSigner:
    upstream = protocol.URL("https", "ollama.com", "", "")

    def __init__(self) -> None:
        self.calls = []

    def sign(self, method, target):
        self.calls.append((method, target))
        return target + "&ts=1", "PUB:SIG"


TOKEN = "och-" + "t" * 40


def proxy_policy(**kwargs):
    signer = FakeSigner()
    address = kwargs.pop("address", ("127.0.0.1", 11470))
    return sign.SigningPolicy(signer, kwargs.pop("token", TOKEN), address, **kwargs), signer


def test_the_proxy_forwards_an_admitted_request_with_only_end_to_end_fields():
    policy, signer = proxy_policy()
    decision = policy.decide(
        head(
            Host="127.0.0.1:11470",
            Authorization=f"Bearer {TOKEN}",
            X_Forwarded_For="1.2.3.4",
            X_API_Key=TOKEN,
            Cookie="c=1",
            Origin_Trial="x",
            Content_Length="2",
        )
    )
    assert isinstance(decision, Forward) and signer.calls == [("POST", "/api/me")]
    names = [name.lower() for name, _ in decision.headers]
    assert names == ["origin-trial", "host", "authorization"]
    assert dict(decision.headers)["Host"] == "ollama.com" and decision.secrets == ("PUB:SIG",)
    assert TOKEN not in repr(decision)


@pytest.mark.parametrize(
    "bound, host",
    [
        ("127.0.0.1", "127.0.0.1:11470"),
        ("127.0.0.1", "localhost:11470"),
        ("127.0.0.1", "LocalHost:11470"),
        ("::1", "[::1]:11470"),
        ("::1", "localhost:11470"),
        ("127.0.0.2", "127.0.0.2:11470"),
        ("127.1.2.3", "127.1.2.3:11470"),
    ],
)
def test_the_proxys_own_hosts(bound, host):
    policy, _ = proxy_policy(address=(bound, 11470))
    assert isinstance(policy.decide(head(Host=host, Authorization=f"Bearer {TOKEN}")), Forward)


@pytest.mark.parametrize(
    "bound, host",
    [
        ("127.0.0.1", "[::1]:11470"),
        ("::1", "127.0.0.1:11470"),
        ("127.0.0.2", "localhost:11470"),
        ("127.0.0.2", "127.0.0.1:11470"),
        ("0.0.0.0", "0.0.0.0:11470"),
        ("0.0.0.0", "localhost:11470"),
    ],
)
def test_a_name_of_another_address_is_refused(bound, host):
    # Break caught: own_hosts admitting the three fixed names whatever was bound.
    policy, signer = proxy_policy(address=(bound, 11470))
    decision = policy.decide(head(Host=host, Authorization=f"Bearer {TOKEN}"))
    assert isinstance(decision, Answer) and decision.status == 403 and signer.calls == []


def test_parse_listen_and_own_hosts_take_their_names_from_one_rule(monkeypatch):
    # Break caught: either caller keeping a list of its own (the printed URL then gets 403).
    from credential_helper import policy as policy_module
    from credential_helper.serve import commands

    monkeypatch.setattr(policy_module, "loopback_names", lambda host: ("127.9.9.9", "ship.test"))
    assert commands.parse_listen("localhost:5", 1, loopback_only=True) == ("127.9.9.9", 5)
    assert sign.own_hosts(("localhost", 5)) == {"127.9.9.9:5", "ship.test:5"}


@pytest.mark.parametrize(
    "host",
    [
        "",
        "127.0.0.1",
        "127.0.0.1:11471",
        "localhost",
        "evil.example:11470",
        "localhost.evil.example:11470",
        "127.0.0.2:11470",
        "0.0.0.0:11470",
        "[::2]:11470",
    ],
)
def test_any_other_host_is_refused_before_the_token_is_looked_at(host):
    policy, signer = proxy_policy()
    decision = policy.decide(head(Host=host, Authorization=f"Bearer {TOKEN}"))
    assert isinstance(decision, Answer) and decision.status == 403 and signer.calls == []


def test_port_80_may_be_implied():
    assert "localhost" in sign.own_hosts(("127.0.0.1", 80)) and "localhost" not in sign.own_hosts(("127.0.0.1", 8080))


@pytest.mark.parametrize(
    "fields",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec_Fetch_Site": "cross-site"},
        {"Sec_Fetch_Site": "Same-Site"},
        {"Origin": "http://localhost:3000/x"},
    ],
)
def test_browser_requests_are_refused_unless_their_origin_is_allowed(fields):
    policy, signer = proxy_policy(allowed_origins=sign.parse_origins(["http://localhost:3000"]))
    decision = policy.decide(head(Host="127.0.0.1:11470", Authorization=f"Bearer {TOKEN}", **fields))
    assert isinstance(decision, Answer) and decision.status == 403 and "--allow-origin" in decision.message
    assert signer.calls == []


def test_an_allowed_origin_compares_host_names_case_insensitively_and_ports_exactly():
    policy, _ = proxy_policy(allowed_origins=sign.parse_origins(["http://LOCALHOST:3000"]))
    admitted = policy.decide(head(Host="127.0.0.1:11470", Authorization=f"Bearer {TOKEN}", Origin="http://localhost:3000"))
    refused = policy.decide(head(Host="127.0.0.1:11470", Authorization=f"Bearer {TOKEN}", Origin="http://localhost:3001"))
    assert isinstance(admitted, Forward) and "origin" not in {n.lower() for n, _ in admitted.headers}
    assert isinstance(refused, Answer)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"X_API_Key": ""},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer ", "X_API_Key": TOKEN},
    ],
)
def test_the_local_token_is_compared_whole(fields):
    policy, signer = proxy_policy()
    decision = policy.decide(head(Host="127.0.0.1:11470", **fields))
    assert isinstance(decision, Answer) and decision.status == 401 and signer.calls == []
    assert TOKEN not in decision.message and dict(decision.headers)["WWW-Authenticate"].startswith("Bearer ")


def test_x_api_key_alone_is_accepted():
    policy, _ = proxy_policy()
    assert isinstance(policy.decide(head(Host="127.0.0.1:11470", X_API_Key=TOKEN)), Forward)


@pytest.mark.parametrize("method", ["get", "Post", "M-SEARCH", "GET1"])
def test_a_method_not_of_upper_case_letters_is_refused_not_signed(method):
    policy, signer = proxy_policy()
    decision = policy.decide(head(method, Host="127.0.0.1:11470", Authorization=f"Bearer {TOKEN}"))
    assert isinstance(decision, Answer) and decision.status == 400 and signer.calls == []


def test_no_local_token_still_checks_host_and_origin():
    policy, _ = proxy_policy(token=None)
    assert isinstance(policy.decide(head(Host="127.0.0.1:11470")), Forward)
    assert policy.decide(head(Host="rebound.example:11470")).status == 403
    assert policy.decide(head(Host="127.0.0.1:11470", Origin="http://evil.example")).status == 403


def test_env_lines_name_every_client_variable():
    lines = sign.env_lines("http://127.0.0.1:11470", "och-x")
    assert "export OLLAMA_API_BASE=http://127.0.0.1:11470" in lines
    assert "export OLLAMA_BASE_URL=http://127.0.0.1:11470/v1" in lines
    assert "export OPENAI_BASE_URL=http://127.0.0.1:11470/v1" in lines


# --- the gate's policies --------------------------------------------------------------------


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "authorized_keys"
    a = " ".join((GOLDEN / "keys" / "ed25519-a.pub").read_text().split()[:2])
    b = " ".join((GOLDEN / "keys" / "ed25519-b.pub").read_text().split()[:2])
    path.write_text(f"{a} alice *\n{b} bob /api/tags\n")
    os.chmod(path, 0o600)
    return KeyFile(str(path), lambda text: None)


def test_the_gate_forwards_ollamas_own_request_without_authorization_and_with_who(key_file):
    vector = next(v for v in load_vectors("gate.json") if v["expect"] == "admit" and v["key_file"].endswith("-a"))
    policy = gate.GatePolicy(key_file, 300, "127.0.0.1:11434", clock=lambda: vector["ts"])
    decision = policy.decide(
        Head(
            vector["method"],
            vector["target"],
            "1.1",
            (
                ("Host", vector["host_header"]),
                ("Authorization", vector["authorization"]),
                ("X-Ollama-User", "root"),
                ("Accept", "application/json"),
            ),
        )
    )
    assert isinstance(decision, Forward) and decision.target == vector["target"]
    assert list(decision.headers) == [
        ("Accept", "application/json"),
        ("Host", "127.0.0.1:11434"),
        ("X-Ollama-User", "alice"),
        ("X-Ollama-Key", "SHA256:" + decision.headers[-1][1][7:]),
    ]
    assert decision.who == "alice"


def test_a_gate_refusal_repeats_its_message_in_a_header_safe_for_json(key_file):
    policy = gate.GatePolicy(key_file, 300, "127.0.0.1:11434", clock=lambda: 0)
    decision = policy.decide(head("GET", '/api/ta"gs\\', Host="box"))
    assert isinstance(decision, Answer) and decision.status == 400
    shown = dict(decision.headers)["X-Ollama-Error"]
    assert '"' not in shown and "\\" not in shown and shown == decision.message


def test_auth_only_takes_method_and_target_from_the_front_servers_headers(key_file, keys):
    import time

    policy = gate.AuthOnlyPolicy(key_file, 300)
    target = f"/api/chat?ts={int(time.time())}"
    authorization = load_identity(str(keys / "ed25519-b")).sign(f"POST,{target}")
    refused = policy.decide(
        head("GET", "/_gate", Host="gate", Authorization=authorization, X_Original_Method="POST", X_Original_URI=target)
    )
    assert refused.status == 403 and refused.about == ("POST", target)  # bob may list models only
    tags = f"/api/tags?ts={int(time.time())}"
    allowed = policy.decide(
        head(
            "GET",
            "/_gate",
            Host="gate",
            X_Forwarded_Method="GET",
            X_Forwarded_Uri=tags,
            Authorization=load_identity(str(keys / "ed25519-b")).sign(f"GET,{tags}"),
        )
    )
    assert allowed.status == 204 and dict(allowed.headers)["X-Ollama-User"] == "bob" and allowed.keep_alive


# --- added after a mutation run (mutmut 3.8.1): each kills a surviving mutant ---------------


def test_head_size_and_field_count_boundaries():
    line = b"GET / HTTP/1.1\r\n"
    exactly = line + b"X: " + b"a" * (32 * 1024 - len(line) - 3) + b"\r\n\r\n"
    assert exactly.find(b"\r\n\r\n") == 32 * 1024 and head_problem(exactly, head("GET", "/", Host="x")) is None
    over = exactly.replace(b"X: a", b"X: aa", 1)
    assert "too large" in head_problem(over, head("GET", "/", Host="x"))
    hundred = Head("GET", "/", "1.1", tuple(("X-A", "1") for _ in range(100)))
    assert head_problem(b"GET / HTTP/1.1\r\n\r\n", hundred) is None
    assert head_problem(b"GET / HTTP/1.1\r\n\r\n", head(version="1.0", Content_Length="2")) is None


def test_a_scheme_of_seven_characters_is_not_bearer():
    policy, signer = proxy_policy()
    assert policy.decide(head(Host="127.0.0.1:11470", Authorization=f"Digest1{TOKEN}")).status == 401
    assert policy.decide(head(Host="127.0.0.1:11470", Authorization=f"Digest {TOKEN}")).status == 401
    assert signer.calls == []


def test_two_origin_fields_are_refused_even_when_the_first_is_allowed():
    policy, _ = proxy_policy(allowed_origins=sign.parse_origins(["http://localhost:3000"]))
    two = Head(
        "POST",
        "/api/me",
        "1.1",
        (
            ("Host", "127.0.0.1:11470"),
            ("Authorization", f"Bearer {TOKEN}"),
            ("Origin", "http://localhost:3000"),
            ("Origin", "http://evil.example"),
        ),
    )
    assert policy.decide(two).status == 403


@pytest.mark.parametrize("value", ["http://localhost:3000/app", "http://localhost:3000?x=1", "http://localhost:3000/?x=1"])
def test_allow_origin_is_an_origin_only(value):
    from credential_helper.errors import InputError

    with pytest.raises(InputError):
        sign.parse_origins([value])


def test_port_80_admits_both_spellings():
    assert sign.own_hosts(("127.0.0.1", 80)) == {"localhost:80", "localhost", "127.0.0.1:80", "127.0.0.1"}
    assert sign.own_hosts(("::1", 80)) == {"localhost:80", "localhost", "[::1]:80", "[::1]"}


def test_a_gate_401_says_how_to_authenticate_and_keeps_the_connection(key_file):
    decision = gate.GatePolicy(key_file, 300, "127.0.0.1:11434", clock=lambda: 0).decide(head("GET", "/api/tags", Host="box"))
    assert decision.status == 401 and decision.keep_alive
    assert dict(decision.headers)["WWW-Authenticate"] == 'Ollama realm="ollama-credential-helper gate"'
    forbidden = gate.refusal(gate.Refused(403, "no"))
    assert "WWW-Authenticate" not in dict(forbidden.headers) and forbidden.keep_alive


def test_the_log_names_a_caller_by_name_else_fingerprint():
    from credential_helper.serve.verify import Admitted

    assert gate.label(Admitted("alice", "SHA256:x")) == "alice"
    assert gate.label(Admitted("SHA256:x", "SHA256:x")) == "SHA256:x"
    assert gate.label(Admitted("-", "")) == "-"


def test_a_header_value_is_cut_at_400_characters():
    assert len(gate.header_text("a" * 1000)) == 400


# --- --auth-only's refusal to start ---------------------------------------------------------------


def test_auth_only_refusal_names_each_line_up_to_the_bound_then_counts_the_rest():
    from credential_helper.serve import restrict

    problems = [f"line {n}: why {n}" for n in range(1, 5)]
    assert restrict.auth_only_refusal(problems[:1]) == "1 line(s) it cannot enforce: line 1: why 1"
    assert restrict.auth_only_refusal(problems) == (
        "4 line(s) it cannot enforce: line 1: why 1 | line 2: why 2 | line 3: why 3 | line 4: why 4"
    )
    assert restrict.auth_only_refusal(problems, shown=2) == (
        "4 line(s) it cannot enforce: line 1: why 1 | line 2: why 2 | and 2 more line(s)"
    )


def test_a_certificate_that_changes_while_it_is_diagnosed_is_said_unreadable(tmp_path, monkeypatch):
    """_tls_problem re-reads --tls-cert to say what is wrong with it; a file swapped for a
    FIFO or removed meanwhile (InterruptedError, FileNotFoundError) is a message, never an
    internal error that ends a SIGHUP reload or the start."""
    import ssl

    from credential_helper.serve import commands

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x\n")
    key.write_text("y\n")

    with pytest.raises(ssl.SSLError) as failed:  # OpenSSL's own error for the garbage, as at a start
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert), str(key))

    class Swapped(ssl.SSLContext):
        def load_verify_locations(self, *args, **kwargs):
            raise InterruptedError(4, "Interrupted system call")

    monkeypatch.setattr(ssl, "SSLContext", Swapped)
    said = commands._tls_problem(str(cert), str(key), failed.value)
    assert said == f"cannot read --tls-cert {cert}: Interrupted system call"
