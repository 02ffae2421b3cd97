"""A hostile review of today's work (issues 19 and 22): each test failed on main."""

from __future__ import annotations

import tracemalloc

import pytest

from credential_helper.serve import models
from credential_helper.serve.key_options import model_allowed, parse_options


def _subject(method: str, path: str, body: bytes) -> str:
    named = models.models_named(method, path, "", "application/json", body)
    assert isinstance(named, models.Named), named
    (model,) = named.models
    return model.subject


# --- models=: a family pattern must not grant another registry's models -----------------------


@pytest.mark.parametrize(
    "pattern, name",
    [
        ("llama3*", "llama3.attacker.example/x/anything"),  # a host name that starts like the family
        ("qwen3:*", "qwen3:443/evil/model:70b"),  # a host named qwen3 on a port (the README's own example)
        ("myteam/*", "myteam/evil/model:latest"),  # host "myteam", not namespace "myteam"
        ("llama3:?b", "llama3:1/x/y:latest"),
    ],
)
def test_a_wildcard_pattern_does_not_cross_into_another_host_or_namespace(pattern, name):
    # /api/pull with the model a member chose: Ollama fetches it from the host in the name.
    subject = _subject("POST", "/api/pull", ('{"model": "%s"}' % name).encode())
    assert not model_allowed(parse_options(f'models="{pattern}"'), subject), subject


@pytest.mark.parametrize(
    "pattern, name",
    [
        ("llama3*", "llama3.1:8b"),
        ("llama3*", "llama3"),
        ("qwen3:*", "qwen3:8b"),
        ("myteam/*", "myteam/coder:7b"),
        ("*", "host:5000/ns/m:8b"),
        ("*", "llama3"),
        ("host:5000/ns/*", "host:5000/ns/m:8b"),
        ("*-cloud", "gpt-oss:20b-cloud"),
    ],
)
def test_the_families_an_operator_means_are_still_granted(pattern, name):
    subject = _subject("POST", "/api/pull", ('{"model": "%s"}' % name).encode())
    assert model_allowed(parse_options(f'models="{pattern}"'), subject), subject


def test_a_negated_pattern_still_denies_across_hosts():
    options = parse_options('models="*,!*70b*"')
    assert not model_allowed(options, _subject("POST", "/api/pull", b'{"model": "h.example/ns/m:70b"}'))


# --- models=: a body read for the model must not cost the gate many times its size ----------


def _peak(call):
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_body_of_a_million_tiny_json_values_is_refused_without_building_them(path):
    # 1.2 M empty arrays in 3.6 MiB: json builds a list object for each (about 64 bytes),
    # holding the GIL throughout. At the 32 MiB limit that was ~2 GiB and ~15 s of every
    # other connection's time, per request, from any member with a models= line.
    body = b'{"model":"small","messages":[],"x":[' + b"[]," * 1_200_000 + b"[]]}"
    result, peak = _peak(lambda: models.models_named("POST", path, "", "application/json", body))
    assert isinstance(result, models.Unreadable) and result.status == 400, result
    assert peak < 4 * len(body), f"{peak >> 20} MiB for a {len(body) >> 20} MiB body"


def test_large_bodies_of_text_images_and_token_arrays_are_still_read():
    prose = b'{"model":"small","prompt":"' + b'hello, world [x] {y} \\" ok, ' * 100_000 + b'"}'
    context = b'{"model":"small","context":[' + b"123456," * 200_000 + b"1]}"
    for body in (prose, context):
        assert _subject("POST", "/api/generate", body) == "small:latest"


# --- the key file: an option written after the key is a misplaced option, never a name --------


def _key_a() -> tuple[str, bytes]:
    import base64

    from conftest import asset

    text = asset("keys/ed25519-a.pub").read_text().split()[1]
    return text, base64.b64decode(text)


@pytest.mark.parametrize(
    "misplaced", ['models="small"', 'from="10.0.0.0/8"', "max-concurrent=1", 'expiry-time="20200101"', 'MODELS="small*"']
)
def test_an_option_in_the_name_field_skips_the_line_instead_of_granting_without_it(misplaced):
    # 'ssh-ed25519 AAAA... models="small" *' read as the name 'models="small"' granted every model.
    from credential_helper.serve.authorized_keys import parse

    text, blob = _key_a()
    keys, warnings = parse(f"ssh-ed25519 {text} {misplaced} *\n")
    assert keys.grants_for(blob) == []
    assert len(warnings) == 1 and "option" in warnings[0], warnings


def test_names_with_an_equals_sign_that_are_not_options_still_name_the_line():
    from credential_helper.serve.authorized_keys import parse

    text, blob = _key_a()
    keys, warnings = parse(f"ssh-ed25519 {text} bob=admin *\n")
    assert warnings == [] and keys.grants_for(blob)[0].name == "bob=admin"


# --- listings: whatever the upstream answers, the filter answers (never an internal error) ------


def test_a_deeply_nested_listing_becomes_an_empty_listing_not_an_internal_error():
    nested = b'{"models":[{"name":"small","details":' + b"[" * 100_000 + b"]" * 100_000 + b"}]}"
    assert models.filter_listing("/api/tags", nested, lambda name: True) == b'{"models":[]}'


# --- /v1/audio/transcriptions: Go's multipart reader stops at 1000 parts, and so must the gate --


def _form(parts: int) -> bytes:
    filler = b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\ny\r\n" * (parts - 1)
    return filler + b"--b\r\nContent-Disposition: form-data; name=model\r\n\r\nsmall\r\n--b--\r\n"


def test_a_form_of_more_parts_than_go_reads_is_refused_before_it_costs_seconds():
    # mime/multipart readForm: more than 1000 parts (GODEBUG multipartmaxparts) is
    # ErrMessageTooLarge, so Ollama answers 400. Read part by part in Python, 32 MiB of
    # tiny parts held the GIL for ~4 s per request.
    named = models.models_named("POST", "/v1/audio/transcriptions", "", "multipart/form-data; boundary=b", _form(1001))
    assert isinstance(named, models.Unreadable) and named.status == 400, named
    named = models.models_named("POST", "/v1/audio/transcriptions", "", "multipart/form-data; boundary=b", _form(1000))
    assert isinstance(named, models.Named) and named.subjects == ("small:latest",), named
