"""gojson and goform against Go's own standard library, on generated hostile inputs.

tests/go/models_oracle.go runs what Ollama runs on a request body (``json.NewDecoder().Decode``
into a struct, as gin's ShouldBindJSON; ``json.Unmarshal`` into ``map[string]json.RawMessage``, as
``extractModelField``; ``strings.TrimSpace``; ``ParseMultipartForm`` + ``FormValue("model")``, as
``TranscriptionMiddleware``). It needs a Go toolchain (Debian's ``golang-go``); without one the
test skips. The local Go may be older than the Go Ollama ships with; the rules compared here
(key folding, duplicates, null, first value, U+FFFD, query/multipart order) have not changed
since Go 1.17 (the ``;`` query separator).

Where this project refuses (grant less) Go is not consulted; where it reads, it must read what
Go reads.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from credential_helper.serve import goform, gojson

GO = shutil.which("go")
pytestmark = pytest.mark.skipif(GO is None, reason="no Go toolchain (apt-get install golang-go)")
FIELDS = ("model", "name", "source", "destination", "kind")


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("go")
    env = dict(os.environ, GOCACHE=str(work / "cache"), GO111MODULE="off", GOFLAGS="", CGO_ENABLED="0")
    src = Path(__file__).parent / "go" / "models_oracle.go"
    subprocess.run([GO, "build", "-o", str(work / "oracle"), str(src)], check=True, env=env, timeout=300)  # type: ignore[list-item]
    return work / "oracle"


def run(oracle: Path, cases: list[dict]) -> list[dict]:
    lines = "".join(json.dumps(dict(c, body=base64.b64encode(c["body"]).decode())) + "\n" for c in cases)
    out = subprocess.run([str(oracle)], input=lines, capture_output=True, text=True, check=True, timeout=120)
    return [json.loads(line) for line in out.stdout.splitlines()]


KEYS = [
    "model",
    "Model",
    "MODEL",
    "mOdEl",
    "\\u006dodel",
    "\\u004dODEL",
    "m\\u006fdel",
    "name",
    "NAME",
    "Name",
    "source",
    "SOURCE",
    "\u017fource",
    "\u017fOURCE",
    "\\u017fource",
    "de\u017ftination",
    "DESTINATION",
    "dest\u0131nation",
    "dest\u0130nation",
    "kind",
    "KIND",
    "\u212aind",
    "\\u212aind",
    "k\u0131nd",
    "m\u043edel",
    "\uff4dodel",
    "modeL ",
    " model",
    "model\\u0000",
    "other",
    "models",
    "mode",
]
VALUES = [
    '"a"',
    '""',
    '" b "',
    '"\\u00a0c\\u3000"',
    '"\\ud800x"',
    '"\\ud83d\\ude00"',
    '"\\ud800\\ud800\\udc00"',
    '"\\udc00"',
    "null",
    "1",
    "true",
    "[]",
    "{}",
    '{"model":"n"}',
    '"x\\u0000y"',
    '"big:cloud"',
    '"\xff\xfe"',
    '"\\"q\\""',
    '"llama3"',
    "-0.5e3",
]
TAILS = ["", " ", "\n", " garbage", '{"model":"z"}', "]", "}", ",", "\x00", "\xff"]


def json_case(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.05:
        return rng.choice(
            [
                b"",
                b" \n",
                b"null",
                b"42",
                b'"model"',
                b'[{"model":"a"}]',
                b"\xef\xbb\xbf{}",
                b'{"model":NaN}',
                b'{"model":"a",}',
                b'{"model":"a"',
                b"nul",
                b'{"model" "a"}',
            ]
        )
    pairs = [f'"{rng.choice(KEYS)}":{rng.choice(VALUES)}' for _ in range(rng.randint(0, 6))]
    text = rng.choice(["", " ", "\t\r\n"]) + "{" + ",".join(pairs) + "}" + rng.choice(TAILS)
    return text.encode("utf-8", "surrogatepass").replace("\xff".encode(), b"\xff").replace("\xfe".encode(), b"\xfe")


SPACES = [
    "",
    " ",
    "\t",
    "\x1c",
    "\x1f",
    "\x85",
    "\xa0",
    "\u1680",
    "\u180e",
    "\u2000",
    "\u200a",
    "\u200b",
    "\u2028",
    "\u202f",
    "\u205f",
    "\u3000",
    "\ufeff",
    "\v",
    "\f",
]


def test_json_and_trim_match_go(oracle):
    rng = random.Random(20261203)
    cases = [
        {
            "body": json_case(rng),
            "content_type": "",
            "query": "",
            "trim": rng.choice(SPACES) + rng.choice(["a", "", "b c"]) + rng.choice(SPACES),
        }
        for _ in range(4000)
    ]
    compared = 0
    for case, go in zip(cases, run(oracle, cases)):
        assert gojson.trim_space(case["trim"]) == go["trimmed"], case["trim"]
        try:
            ours = gojson.bind_strings(gojson.decode_first(case["body"]), FIELDS)
        except gojson.GoJSONError:
            ours = None
        assert (ours is None) == go["decode_err"], case["body"]
        if ours is not None:
            assert ours == go["fields"], case["body"]
            compared += 1
        try:
            raw = gojson.map_get(gojson.unmarshal_whole(case["body"]), "model")
        except (gojson.GoJSONError, KeyError):
            raw = False
        mine = (True, gojson.go_string(raw or "")) if raw is None or isinstance(raw, str) else (False, "")
        assert mine == (go["map_ok"], go["map_model"] if go["map_ok"] else ""), case["body"]
    assert compared > 1500


def multipart_case(rng: random.Random) -> tuple[str, bytes]:
    b = rng.choice(["XyZ", "----WebKitFormBoundary7MA4YWxk", "a b", "q"])
    ctype = rng.choice(
        [f"multipart/form-data; boundary={b}"] * 6
        + [
            f'multipart/form-data; boundary="{b}"',
            f"Multipart/Form-Data; boundary={b}; charset=utf-8",
            f"multipart/mixed; boundary={b}",
            "application/json",
            f"multipart/form-data; boundary={b}; boundary=x",
        ]
    )
    nl = "\r\n" if rng.random() < 0.95 else "\n"
    parts = []
    for _ in range(rng.randint(0, 3)):
        name = rng.choice(['"model"'] * 4 + ["model", '"Model"', '"file"', '"mod\\el"', '"model"; filename="a"', '""'])
        headers = [f"Content-Disposition: {rng.choice(['form-data'] * 4 + ['FORM-DATA', 'attachment'])}; name={name}"]
        if rng.random() < 0.1:
            headers.append(
                rng.choice(["Content-Type: text/plain", "Content-Transfer-Encoding: quoted-printable", "X-Other: 1", " folded"])
            )
        value = rng.choice(["small", " big ", "a=3Db", "", "big:cloud", "l\u00e8"])
        parts.append(f"--{b}{nl}" + nl.join(headers) + f"{nl}{nl}{value}{nl}")
    body = rng.choice(["", "", "", "preamble" + nl]) + "".join(parts) + f"--{b}--" + rng.choice(["", nl, nl + "x", "x", " "])
    return ctype, body.encode("utf-8")


def test_transcription_form_matches_go(oracle):
    rng = random.Random(1203)
    cases = []
    for _ in range(6000):
        ctype, body = multipart_case(rng)
        query = rng.choice(
            ["", "", "model=q", "model=q&model=r", "x=1;y=2", "model=%zz", "model=a+b%3Acloud", "&&model=", "Model=m", "model"]
        )
        cases.append({"body": body, "content_type": ctype, "query": query, "trim": ""})
    read = 0
    for case, go in zip(cases, run(oracle, cases)):
        try:
            values = goform.parse_query(case["query"]).get("model", [])
            in_body = goform.multipart_values(case["content_type"], case["body"], "model")
        except goform.FormError:
            continue  # refused here: Go not consulted
        if len(in_body) > 1:
            continue  # refused by models.py
        values += in_body
        assert not go["form_err"], case
        assert (values[0] if values else "") == go["form_model"], case
        read += 1
    assert read > 300  # read here and by Go, and read alike (the rest refused here)
