"""serve/models.py and serve/gojson.py against Ollama's own reading of requests.

golden/models.json was recorded from Ollama's own code at fb30760 (its request structs, gin
binding, /v1 middlewares, internal/modelref, types/model/name.go), not by this project. Every
vector must either agree with Ollama (the same models, the same cloud routing, the same
DisplayShortest) or be refused; naming a model Ollama would not act on fails the test.
"""

from __future__ import annotations

import collections
import json

import pytest
from conftest import asset

from credential_helper.serve import gojson, modelname, models
from credential_helper.serve.models import (
    Named,
    Unknown,
    Unreadable,
    denied,
    filter_listing,
    filter_show,
    listing_error,
    models_named,
)

GOLDEN = json.loads(asset("models.json").read_text())
VECTORS = GOLDEN["vectors"]

# Ollama reads the name and then refuses on another field (the /v1 middlewares: no messages,
# no max_tokens, no input); naming the model there lets nothing through that Ollama acts on.
REFUSED_AFTER_NAME = {"v1-chat/no messages", "v1-messages/no max_tokens", "v1-embeddings/no input"}


def _call(v: dict) -> models.Result:
    method, target = v["endpoint"].split(" ", 1)
    path, _, query = target.partition("?")
    body = v["body"].encode("utf-8") if "body" in v else None
    encoding = (v.get("headers") or {}).get("Content-Encoding")
    return models_named(method, path, query, v.get("content_type"), body, content_encoding=encoding)


def _endpoint(v: dict) -> str:
    method, target = v["endpoint"].split(" ", 1)
    path = target.partition("?")[0]
    return f"{method} /v1/models/:model" if path.startswith("/v1/models/") else f"{method} {path}"


def _agrees(got: tuple[models.Model, ...], acts_on: list[dict]) -> bool:
    if len(got) != len(acts_on):
        return False
    for m, a in zip(got, acts_on):
        if m.role != a["role"]:
            return False
        if "cloud_model" in a:  # forwarded to the cloud: compare the model string sent upstream
            sent = a["cloud_model"] if a["cloud_model"] is not None else a["upstream_path"].rsplit("/", 1)[1]
            if not (m.cloud and m.base == sent):
                return False
        else:
            same_local = m.cloud or m.subject == a["short"].lower()  # DisplayShortest, lower-case
            if m.name != a["name"].lower() or m.cloud != (a["route"] == "cloud") or not same_local:
                return False
    return True


def classify(v: dict) -> str:
    r = _call(v)
    acts = v["outcome"] in ("local", "cloud")
    if not isinstance(r, Named):
        return "refuse" if acts else "both refuse"
    if acts:
        return "agree" if _agrees(r.models, v["acts_on"]) else "WRONG"
    return "named, Ollama refuses later" if v["id"] in REFUSED_AFTER_NAME else "WRONG"


def test_golden_header():
    assert GOLDEN["ollama_commit"].startswith("fb30760")
    assert GOLDEN["count"] == len(VECTORS) == 1926


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_vector_agrees_or_refuses(vector):
    assert classify(vector) != "WRONG", (vector["acts_on"], _call(vector))


def test_vector_summary(capsys):
    """Agreement by endpoint (run with -s to see it); most vectors must agree, not refuse."""
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for v in VECTORS:
        table[_endpoint(v)][classify(v)] += 1
    with capsys.disabled():
        print()
        for endpoint, counts in sorted(table.items()):
            print(f"  {endpoint:30} " + ", ".join(f"{k}: {n}" for k, n in sorted(counts.items())))
    total = sum(table.values(), collections.Counter())
    assert total["WRONG"] == 0
    assert total["refuse"] == 0  # every request Ollama acts on is read, none refused
    assert total["agree"] == sum(v["outcome"] in ("local", "cloud") for v in VECTORS)


# --- a hostile member: every endpoint x every way to name a model --------------------------------


def allowed(subject: str) -> bool:
    return subject in ("small:latest", "small:1")


BIG = [
    "big",
    "BIG",
    "Big:Latest",
    "big:7b",
    "big:local",
    " big ",
    "big\t",
    "library/big",
    "registry.ollama.ai/library/big",
    "REGISTRY.OLLAMA.AI/Library/big:latest",
    "https://registry.ollama.ai/library/big",
    "http://evil.example/library/small",
    "evil.example:5000/library/small:latest",
    "small/big",
    "big:cloud",
    "big:7b-cloud",
    "big:CLOUD",
    "small:x:cloud",
    "big@sha256:" + "0" * 64,
    "small@sha256:" + "0" * 64,
    "big\u00a0",
    "bi\u0261",
    "small:latest/../big",
]

NATIVE = ["/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/show", "/api/pull", "/api/push", "/api/create"]
V1 = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"]


def spellings(name: str, field: str = "model") -> list[bytes]:
    """Bodies in which Go's decoder sets ``field`` to ``name`` (last duplicate, folded or escaped key)."""
    up, esc = field.upper(), f"\\u{ord(field[0]):04x}" + field[1:]
    folded = field.replace("s", "\u017f")
    q = json.dumps(name)
    return [
        s.encode()
        for s in (
            f'{{"{field}":{q}}}',
            f'{{"{field}":"small:1","{field}":{q}}}',
            f'{{"{field}":"small:1","{up}":{q}}}',
            f'{{"{up}":"small:1","{field}":{q}}}',
            f'{{"{field}":{q},"{field}":null}}',
            f'{{"{esc}":{q}}}',
            f'{{"{field}":"small:1","{esc}":{q}}}',
            f'{{"{field}":"small:1","{folded}":{q}}}',
            f'{{"{field}":{q}}}{{"{field}":"small:1"}}',
            f'  {{"{field.title()}":{q}}} trailing',
            f'{{"{field}":"small:1","{field}":{q},"tools":[{{"type":"web_search"}}]}}',
        )
    ]


def assert_never_passes(result: models.Result) -> None:
    assert not isinstance(result, Named) or denied(result, allowed) is not None, result


@pytest.mark.parametrize("path", NATIVE + V1)
@pytest.mark.parametrize("name", BIG)
def test_hostile_model_field(path, name):
    for body in spellings(name):
        for ctype in ("application/json", "text/plain", None):
            assert_never_passes(models_named("POST", path, "", ctype, body))


@pytest.mark.parametrize("path", ["/api/show", "/api/pull", "/api/push", "/api/create", "/api/delete"])
@pytest.mark.parametrize("name", BIG)
def test_hostile_name_field(path, name):
    method = "DELETE" if path == "/api/delete" else "POST"
    for body in spellings(name, "name"):
        assert_never_passes(models_named(method, path, "", "application/json", body))


@pytest.mark.parametrize("field", ["source", "destination", "from"])
@pytest.mark.parametrize("name", BIG)
def test_hostile_copy_and_create_parents(field, name):
    path = "/api/create" if field == "from" else "/api/copy"
    other = {"source": "destination", "destination": "source", "from": "model"}[field]
    for body in spellings(name, field):
        doc = body.decode()
        doc = doc.replace("{", f'{{"{other}":"small:1",', 1)
        assert_never_passes(models_named("POST", path, "", "application/json", doc.encode()))


def test_hostile_exact_readings():
    """What Go's decoder does, spelled out (each of these is a rule someone gets wrong)."""

    def subjects(path, body, method="POST"):
        r = models_named(method, path, "", "application/json", body.encode())
        return r.subjects if isinstance(r, Named) else r

    assert subjects("/api/chat", '{"model":"small","MODEL":"big"}') == ("big:latest",)
    assert subjects("/api/chat", '{"MODEL":"small","model":"big"}') == ("big:latest",)
    assert subjects("/api/chat", '{"model":"big","model":null}') == ("big:latest",)
    assert subjects("/api/chat", '{"model":"small","\\u006dodel":"big"}') == ("big:latest",)
    assert subjects("/api/chat", '{"model":"small","name":"big"}') == ("small:latest",)  # no name field
    assert subjects("/api/show", '{"model":"","name":"big"}') == ("big:latest",)
    assert subjects("/api/show", '{"name":"big","model":"small"}') == ("small:latest",)
    assert subjects("/api/copy", '{"\u017fource":"big","de\u017ftination":"small"}') == ("big:latest", "small:latest")
    assert subjects("/api/create", '{"model":"mine","from":"big:cloud"}') == ("mine:latest", "big:cloud")
    # create.go:130-145: remote_host makes the parent a model on a host the request names
    assert isinstance(subjects("/api/create", '{"model":"mine","from":"small","REMOTE_HOST":"http://x"}'), Unreadable)
    # create.go:184 weights named by digest: a way to name a model without its name
    for field in ("files", "FILES", "adapters", "adapter\u017f", "Draft_Files"):
        body = f'{{"model":"small","{field}":{{"m.gguf":"sha256:{"0" * 64}"}}}}'
        assert isinstance(subjects("/api/create", body), Unreadable), field
    assert subjects("/api/create", '{"model":"small","files":null,"from":"small"}') == ("small:latest", "small:latest")
    assert subjects("/api/chat", '{"model":"big:7b:cloud"}') == ("big:7b-cloud",)
    assert subjects("/api/pull", '{"model":"big:7b:cloud"}') == ("big:7b-cloud",)
    assert subjects("/api/chat", '{"model":"small"}{"model":"big"}') == ("small:latest",)
    assert subjects("/api/chat", '{"model":"Host.Example:5000/NS/Big:7B"}') == ("host.example:5000/ns/big:7b",)
    # /v1: the cloud check reads the exact key "model" of the whole body, the handler the folded one
    assert subjects("/v1/chat/completions", '{"model":"big:cloud","Model":"small"}') == ("big:cloud",)
    assert subjects("/v1/chat/completions", '{"Model":"big:cloud","model":"small"}') == ("small:latest",)
    assert isinstance(subjects("/v1/responses", '{"model":"big:cloud","Model":"small","tools":[]}'), Unreadable)
    assert subjects("/api/ch%61t", '{"model":"big"}') == ("big:latest",)  # gin routes the decoded path
    assert isinstance(subjects("/API/chat", '{"model":"big"}'), Unknown)
    assert isinstance(subjects("/api/chat/", '{"model":"big"}'), Unknown)
    assert isinstance(subjects("/api/../api/chat", '{"model":"big"}'), Unknown)
    assert isinstance(subjects("/api/chat", '{"model":"big"}', method="PUT"), Unknown)


def test_v1_model_path():
    def get(path):
        r = models_named("GET", path, "", None, None)
        return r.subjects if isinstance(r, Named) else type(r).__name__

    assert get("/v1/models/BIG") == ("big:latest",)
    assert get("/v1/models/big%3Acloud") == ("big:cloud",)
    assert get("/v1/models/%20big%09") == ("big:latest",)
    assert get("/v1/models/ns%2Fbig") == "Unknown"  # decoded to two segments: gin answers 404
    assert get("/v1/models/big/") == "Unknown"
    assert get("/v1/models/%zz") == "Unknown"
    assert models_named("GET", "/v1/models", "", None, None) == Named(listing=True)


def test_compressed_chunked_and_oversized_bodies():
    body = b'{"model":"small"}'
    for encoding in ("gzip", "zstd", "br", "deflate", "ZSTD"):
        assert models_named("POST", "/api/chat", "", "application/json", body, content_encoding=encoding) == Unreadable(
            400, "compressed body"
        )
    assert isinstance(models_named("POST", "/api/chat", "", "application/json", body, content_encoding="identity"), Named)
    assert models_named("POST", "/api/chat", "", None, body, limit=8).status == 413  # type: ignore[union-attr]
    # A body still chunk-encoded (the engine did not de-chunk it) is not JSON: refused
    assert isinstance(models_named("POST", "/api/chat", "", None, b"11\r\n" + body + b"\r\n0\r\n\r\n"), Unreadable)


MULTIPART = "multipart/form-data; boundary=XyZ"


def form(*parts: tuple[str, str]) -> bytes:
    out = b""
    for disposition, value in parts:
        out += b"--XyZ\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n" + value.encode() + b"\r\n"
    return out + b"--XyZ--\r\n"


def test_transcriptions_query_first_then_multipart():
    path = "/v1/audio/transcriptions"
    body = form(('form-data; name="model"', "small"), ('form-data; name="file"; filename="a.wav"', "RIFF"))
    assert models_named("POST", path, "", MULTIPART, body).subjects == ("small:latest",)  # type: ignore[union-attr]
    # net/http puts the query values first in r.Form: FormValue("model") is the query's
    assert models_named("POST", path, "model=big", MULTIPART, body).subjects == ("big:latest",)  # type: ignore[union-attr]
    assert models_named("POST", path, "model=big%3Acloud", MULTIPART, body).subjects == ("big:cloud",)  # type: ignore[union-attr]
    for query in ("model=big;x=1", "model=%zz", "x=1&model="):
        assert isinstance(models_named("POST", path, query, MULTIPART, body), Unreadable)
    hostile = [
        form(('form-data; name="model"', "small"), ('form-data; name="model"', "big")),  # two values
        form(("form-data; name*=UTF-8''model", "big")),  # RFC 2231
        form(('form-data; name="model"; filename="x"', "big")),
        form(('form-data; name="mod\\el"', "big")),
        body.replace(b"--XyZ\r\n", b"preamble\r\n--XyZ\r\n", 1),
        body.replace(b"\r\n", b"\n"),
        body.replace(b"Content-Disposition", b"Content-Transfer-Encoding: quoted-printable\r\nContent-Disposition", 1),
    ]
    for b in hostile:
        assert isinstance(models_named("POST", path, "", MULTIPART, b), Unreadable), b
    assert isinstance(models_named("POST", path, "", "application/json", b'{"model":"small"}'), Unreadable)


def test_endpoints_without_models_and_unknown_ones():
    assert models_named("GET", "/api/version", "", None, None) == Named()
    for method, path in [("GET", "/api/tags"), ("HEAD", "/api/tags"), ("GET", "/api/ps")]:
        assert models_named(method, path, "", None, None) == Named(listing=True)
    for method, path in [
        ("POST", "/api/signout"),
        ("POST", "/api/me"),
        ("DELETE", "/api/user/keys/x"),
        ("POST", "/api/experimental/web_search"),
        ("POST", "/api/new"),
        ("GET", "/v1/other"),
        ("POST", "/api/blobs/sha256:" + "a" * 64),
        ("HEAD", "/api/blobs/sha256:" + "a" * 64),
    ]:
        assert isinstance(models_named(method, path, "", "application/json", b'{"model":"small"}'), Unknown)


# --- listings ---------------------------------------------------------------------------------


def test_filter_listing_tags_ps_and_v1():
    tags = {
        "models": [
            {"name": "small:latest", "model": "small:latest", "size": 1},
            {"name": "big:latest", "model": "big:latest"},
            {"name": "small:latest", "model": "big:latest"},
            {"name": "evil.example/library/small:latest", "model": "evil.example/library/small:latest"},
            {"name": "not valid", "model": "not valid"},
            "junk",
        ]
    }
    out = json.loads(filter_listing("/api/tags", json.dumps(tags).encode(), allowed))
    assert out == {"models": [{"name": "small:latest", "model": "small:latest", "size": 1}]}
    assert json.loads(filter_listing("/api/ps", json.dumps(tags).encode(), allowed))["models"][0]["size"] == 1
    v1 = {"object": "list", "data": [{"id": "Small:1", "object": "model"}, {"id": "big:latest", "object": "model"}]}
    assert json.loads(filter_listing("/v1/models", json.dumps(v1).encode(), allowed)) == {
        "object": "list",
        "data": [{"id": "Small:1", "object": "model"}],
    }
    assert json.loads(filter_listing("/api/tags", b"<html>", allowed)) == {"models": []}
    assert json.loads(filter_listing("/v1/models", b'{"data":"x"}', allowed)) == {"object": "list", "data": []}
    assert filter_listing("/api/tags", b"", allowed) == b""
    # a cloud stub is listed under the name a chat with it is matched against
    stub = {"models": [{"name": "big:7b-cloud", "model": "big:7b-cloud"}]}
    assert json.loads(filter_listing("/api/tags", json.dumps(stub).encode(), lambda s: s == "big:7b-cloud"))["models"]
    assert models_named("POST", "/api/chat", "", None, b'{"model":"big:7b-cloud"}').subjects == ("big:7b-cloud",)  # type: ignore[union-attr]


# --- /api/show: no other model's name ------------------------------------------------------------

# docs/api.md "Show Model Information", its response (ollama/ollama fb30760), as JSON.
API_MD_SHOW = {
    "modelfile": '# Modelfile generated by "ollama show"\n# To build a new Modelfile based on this one, replace the FROM line '
    "with:\n# FROM llava:latest\n\nFROM /Users/matt/.ollama/models/blobs/sha256:200765e1283640ffbd013184bf496e261032fa75b994"
    '98a9613be4e94d63ad52\nTEMPLATE """{{ .System }}\nUSER: {{ .Prompt }}\nASSISTANT: """\nPARAMETER num_ctx 4096\n'
    'PARAMETER stop "\u003c/s\u003e"\nPARAMETER stop "USER:"\nPARAMETER stop "ASSISTANT:"',
    "parameters": 'num_keep                       24\nstop                           "<|start_header_id|>"',
    "template": "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}",
    "details": {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "8.0B",
        "quantization_level": "Q4_0",
    },
    "model_info": {"general.architecture": "llama", "llama.attention.layer_norm_rms_epsilon": 0.00001},
    "capabilities": ["completion", "vision"],
}


def llava_only(subject: str) -> bool:
    return subject.startswith("llava:")


def shown(doc: dict, allowed=llava_only) -> dict:
    return json.loads(filter_show(json.dumps(doc).encode(), allowed))


def test_a_show_naming_only_the_model_itself_passes_byte_for_byte():
    # Its "# FROM llava:latest" is the model shown; its FROM is a blob path (routes.go GetModelInfo).
    body = json.dumps(API_MD_SHOW).encode()
    assert filter_show(body, llava_only) == body
    windows = dict(API_MD_SHOW, modelfile="# FROM llava:latest\n\nFROM C:\\Users\\m\\.ollama\\models\\blobs\\sha256-2007\n")
    assert filter_show(json.dumps(windows).encode(), llava_only) == json.dumps(windows).encode()
    parent_allowed = dict(API_MD_SHOW, details=dict(API_MD_SHOW["details"], parent_model="llava:7b"))
    assert shown(parent_allowed) == parent_allowed


def test_a_show_blanks_the_parent_model_the_key_may_not_use():
    # details.parent_model is the model of a FROM <model> create (server/model.go parseFromModel).
    secret = dict(API_MD_SHOW, details=dict(API_MD_SHOW["details"], parent_model="secret-base:70b"))
    out = shown(secret)
    assert out["details"]["parent_model"] == "" and out["details"]["family"] == "llama"
    assert out["modelfile"] == API_MD_SHOW["modelfile"] and out["model_info"] == API_MD_SHOW["model_info"]
    assert "secret" not in json.dumps(out)


@pytest.mark.parametrize(
    "modelfile, kept",
    [
        ("FROM secret-base:70b\nSYSTEM hi\n", False),  # a name, as a cloud answer or an older Ollama may write
        ("# FROM llava:latest\n\nfrom Secret-Base\n", False),  # commands are case-insensitive (parser.go)
        ("# FROM secret-base:70b\nFROM /blobs/sha256-1\n", False),
        ("FROM evil.example/library/llava:latest\n", False),  # another registry's llava is another model
        ("FROM\n", True),  # no argument (a remote stub's empty ModelPath): names nothing
        ('FROM /b/sha256-1\nSYSTEM """\nfrom now on answer briefly\n"""\n', True),  # inside a quoted argument
        ('FROM /b/sha256-1\nTEMPLATE """x"""\nFROM secret\n', False),  # after the quotes close
        ("FROM llava:13b\n", True),
    ],
)
def test_a_modelfile_naming_a_model_the_key_may_not_use_is_emptied(modelfile, kept):
    out = shown(dict(API_MD_SHOW, modelfile=modelfile))
    assert out["modelfile"] == (modelfile if kept else "")
    assert out["template"] == API_MD_SHOW["template"]


def test_a_remote_model_is_shown_when_the_key_may_use_it_as_the_cloud_model_it_is():
    # server/create.go: a stub created from gpt-oss:120b-cloud forwards to remote_model gpt-oss:120b.
    stub = dict(API_MD_SHOW, remote_model="gpt-oss:120b", remote_host="https://ollama.com:443", modelfile="FROM \n")
    assert shown(stub, lambda s: s == "gpt-oss:120b-cloud")["remote_model"] == "gpt-oss:120b"
    assert shown(stub, lambda s: s == "team-chat:latest")["remote_model"] == ""


def test_a_show_answer_that_is_not_a_json_object_becomes_empty():
    for body in (b"<html>", b"[]", b"", b'"x"'):
        assert filter_show(body, llava_only) == b"{}"


def test_a_listing_entry_shows_no_parent_the_key_may_not_use():
    # /api/tags entries carry details.parent_model too (server/model_list_cache.go).
    tags = {
        "models": [
            {"name": "small:latest", "model": "small:latest", "details": {"parent_model": "big:latest", "family": "x"}},
            {"name": "small:1", "model": "small:1", "details": {"parent_model": "small:latest"}},
        ]
    }
    out = json.loads(filter_listing("/api/tags", json.dumps(tags).encode(), allowed))
    assert [m["details"] for m in out["models"]] == [{"parent_model": "", "family": "x"}, {"parent_model": "small:latest"}]


# A 500 of ListHandler (routes.go: err.Error()) from manifest.go Manifests' fmt.Errorf("%s %w", match, err).
LIST_500 = b'{"error":"/root/.ollama/models/manifests/registry.ollama.ai/library/secret-base/70b permission denied"}'


@pytest.mark.parametrize("path", ["/api/tags", "/api/ps", "/v1/models"])
def test_a_listing_answered_with_an_error_keeps_its_status_but_not_its_text(path):
    for status, body in ((500, LIST_500), (404, b"404 page not found"), (503, b'{"models":[{"name":"secret-base:70b"}]}')):
        out = listing_error(path, status, body)
        assert b"secret" not in out and f"Ollama answered {status} to this model listing".encode() in out
        error = json.loads(out)["error"]
        assert isinstance(error, dict) if path.startswith("/v1/") else isinstance(error, str)  # each client's shape
    assert listing_error(path, 304, b"") == b""


# --- gojson and name.go details -----------------------------------------------------------------


def test_go_trim_space_is_not_python_strip():
    assert gojson.trim_space("\x1cbig\x1f") == "\x1cbig\x1f"  # Python's strip() would trim these
    assert gojson.trim_space("\u00a0\u3000big\u2028\x85") == "big"


def test_go_strings():
    assert gojson.go_string("a\ud800b") == "a\ufffdb"
    assert gojson.bind_strings(gojson.decode_first(b'{"model":"\\ud83d\\ude00"}'), ("model",)) == {"model": "\U0001f600"}
    assert gojson.bind_strings(gojson.decode_first(b'{"model":"\\ud800\\ud800\\udc00"}'), ("model",)) == {
        "model": "\ufffd\U00010000"
    }
    assert gojson.bind_strings(gojson.decode_first(b'{"model":"a\xffb"}'), ("model",)) == {"model": "a\ufffdb"}
    # Turkish dotless/dotted i fold only to themselves in Go (tables.go caseOrbit)
    assert gojson.bind_keys(gojson.decode_first('{"d\u0131":1,"\u0130d":2,"\u212aey":3}'.encode())) == {"key"}
    for bad in (b"", b"  \n", b"NaN", b'{"model":NaN}', b'{"model":"a",}', b"\xef\xbb\xbf{}", b'{"model":"a"', b"[" * 5000):
        with pytest.raises(gojson.GoJSONError):
            gojson.decode_first(bad)
    with pytest.raises(gojson.TypeMismatch):
        gojson.bind_strings(gojson.decode_first(b'{"model":1}'), ("model",))
    with pytest.raises(gojson.GoJSONError):
        gojson.unmarshal_whole(b'{"model":"a"} x')


@pytest.mark.parametrize(
    "raw,expected",
    [
        # from Ollama's types/model/name_test.go and internal/modelref/modelref_test.go shapes
        ("mistral:latest", "registry.ollama.ai/library/mistral:latest"),
        ("example.com/library/mistral:latest", "example.com/library/mistral:latest"),
        ("https://example.com/ns/mistral:7b", "example.com/ns/mistral:7b"),
        ("example.com:5000/ns/mistral", "example.com:5000/ns/mistral:latest"),
        ("myhost:5000", "registry.ollama.ai/library/myhost:5000"),
        ("a/b/c/d", None),
        ("-bad", None),
        ("_ok", "registry.ollama.ai/library/_ok:latest"),
        ("ns./m", None),
        (":tag", None),
        ("m:", None),
        ("/m", None),
        ("m" * 81, None),
        ("m" * 80, "registry.ollama.ai/library/" + "m" * 80 + ":latest"),
        ("m@sha256:abc", None),
        ("mod\u00e8le", None),
        ("\u212aelvin", None),
    ],
)
def test_name_go(raw, expected):
    parts = modelname.parse_name(raw)
    assert (None if parts is None else "{}/{}/{}:{}".format(*parts)) == expected


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("gpt-oss:20b:cloud", ("gpt-oss:20b", "cloud")),
        ("gpt-oss:20b-cloud", ("gpt-oss:20b", "cloud")),
        ("gpt-oss:cloud", ("gpt-oss", "cloud")),
        ("m:LOCAL", ("m", "local")),
        (" m : cloud ", ("m ", "cloud")),
        ("host:5000/m-cloud", ("host:5000/m-cloud", "")),
        ("m:cloud:local", None),
        ("m:8b-cloud:cloud", None),
        ("  ", None),
    ],
)
def test_modelref(raw, expected):
    assert modelname.parse_ref(raw) == expected


def test_a_listing_entry_names_no_remote_model_the_key_may_not_use():
    # A stub made from a cloud or remote model lists its remote_model in /api/tags too
    # (server/routes.go ListHandler: RemoteModel: cf.RemoteModel), not only in /api/show.
    tags = {
        "models": [
            {"name": "small:latest", "model": "small:latest", "remote_model": "secret-model:671b"},
            {"name": "small:1", "model": "small:1", "remote_model": "small:latest"},
        ]
    }
    out = json.loads(filter_listing("/api/tags", json.dumps(tags).encode(), allowed))
    assert [m["remote_model"] for m in out["models"]] == ["", "small:latest"]
    assert "secret-model" not in json.dumps(out)
