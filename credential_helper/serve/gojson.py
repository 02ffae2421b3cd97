"""Reading a JSON body exactly as Go's ``encoding/json`` does, for the few fields a gate needs.

Ollama (ollama/ollama@fb30760) binds every JSON request with gin's ``c.ShouldBindJSON``, which
is ``json.NewDecoder(req.Body).Decode(obj)`` (gin ``binding/json.go`` ``decodeJSON``; the
Content-Type is never consulted). Its ``/v1`` cloud check reads the same body with
``json.Unmarshal`` into ``map[string]json.RawMessage`` (``server/cloud_proxy.go:304``
``extractModelField``). The two differ, and both differ from Python's ``json``:

- ``Decoder.Decode`` reads the FIRST value and ignores whatever follows it; ``json.Unmarshal``
  refuses anything but whitespace after the value (``checkValid``).
- Into a struct, an object key goes to the field whose tag equals it exactly, else to the field
  whose name is equal under Go's ``foldName`` (``encoding/json/fold.go``: ASCII letters upper-cased,
  every other rune replaced by the smallest rune of its ``unicode.SimpleFold`` orbit). The only
  non-ASCII runes whose fold is an ASCII upper-case letter are U+017F (long s, folds to ``S``) and
  U+212A (Kelvin sign, folds to ``K``): Go's ``caseOrbit`` table pins U+0130 and U+0131 to
  themselves. The last occurrence wins; a ``null`` leaves the field as it was; a non-string for a
  string field is an ``UnmarshalTypeError``, which ``Decode`` returns (gin answers 400).
- Into a map, keys are compared exactly (after unescaping), the last duplicate wins, ``null``
  is kept as the raw value ``null``.
- Strings: a lone or mismatched UTF-16 surrogate escape becomes U+FFFD (``decode.go``
  ``unquoteBytes``); invalid UTF-8 bytes become U+FFFD. Names holding U+FFFD are never valid model
  names (``types/model/name.go`` ``isValidPart`` is ASCII-only), so the count of U+FFFD per
  invalid sequence, where Go and Python differ, cannot change a decision.

Python's C ``json`` scanner accepts the same grammar as Go's scanner except ``NaN``/``Infinity``
(refused here through ``parse_constant``), lone surrogates (mapped to U+FFFD here) and nesting
beyond Python's recursion limit or integers beyond ``sys.int_info.str_digits_check_threshold``
digits (both refused here, where Go would accept: grant less). Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = [
    "GoJSONError",
    "MissingBody",
    "Pairs",
    "TypeMismatch",
    "bind_keys",
    "bind_strings",
    "decode_first",
    "go_string",
    "map_get",
    "trim_space",
    "unmarshal_whole",
]


class GoJSONError(ValueError):
    """The body is not what Go's decoder would accept (syntax error, unexpected EOF ...)."""


class MissingBody(GoJSONError):
    """``io.EOF`` from ``Decode``: nothing but whitespace (Ollama answers "missing request body")."""


class TypeMismatch(GoJSONError):
    """A name field got a JSON value that is neither a string nor ``null``."""


def _no_constant(name: str) -> Any:
    # Go's scanner has no NaN/Infinity literals (encoding/json/scanner.go).
    raise GoJSONError(f"invalid literal {name}")


class Pairs(list[tuple[str, Any]]):
    """A JSON object: its (key, value) pairs in document order (arrays stay plain lists)."""


_DECODER = json.JSONDecoder(object_pairs_hook=Pairs, parse_constant=_no_constant, strict=True)
_WS = " \t\r\n"  # encoding/json/scanner.go isSpace
_SURROGATE = re.compile("[\ud800-\udfff]")


def go_string(s: str) -> str:
    """A decoded JSON string as Go holds it: lone surrogates become U+FFFD (decode.go unquoteBytes)."""
    if s.isascii():
        return s
    return _SURROGATE.sub("\ufffd", s)


def _text(body: bytes) -> str:
    # Invalid UTF-8 inside a string is U+FFFD in Go; outside a string it is a syntax error either way.
    return body.decode("utf-8", errors="replace")


def _scan(text: str, start: int) -> tuple[Any, int]:
    try:
        return _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text):
            raise GoJSONError("unexpected EOF") from None
        raise GoJSONError("invalid JSON") from None
    except (RecursionError, ValueError) as exc:  # depth, huge integers, NaN: refuse
        raise GoJSONError("JSON this gate does not read") from exc


# Values a body may hold for the gate to read it (grant less: a body with more is refused,
# 400, where Go would read it). Python builds an object for every value (an empty array is
# ~64 bytes for 3 bytes of JSON) while holding the GIL: unbounded, one 32 MiB body of `[],`
# cost ~2 GiB and ~15 s of every other connection's time. A million values (a 128k-token
# `context`, long `input` arrays) are ~64 MiB and well under a second.
MAX_VALUES = 1 << 20
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def _bounded(body: bytes) -> None:
    """Refuse a body with more than MAX_VALUES values before Python builds them: strings
    taken out (their text may hold any bracket or comma), each ``,`` ``[`` ``{`` counted."""
    if len(body) <= MAX_VALUES:
        return  # cannot hold more values than bytes
    bare = _STRING.sub(b'""', body)
    if bare.count(b",") + bare.count(b"[") + bare.count(b"{") > MAX_VALUES:
        raise GoJSONError(f"JSON with more than {MAX_VALUES} values, which this gate does not read")


def decode_first(body: bytes) -> Any:
    """The first JSON value of ``body``, as ``json.NewDecoder(body).Decode`` reads it.

    Objects come back as ``Pairs`` (lists of ``(key, value)``) in document order. Raises
    ``MissingBody`` for an empty or all-whitespace body, ``GoJSONError`` for anything Go's
    decoder would refuse before binding.
    """
    text = _text(body)
    start = len(text) - len(text.lstrip(_WS))
    if start == len(text):
        raise MissingBody("missing request body")
    _bounded(body)
    value, _end = _scan(text, start)
    return value


def unmarshal_whole(body: bytes) -> Any:
    """``body`` as ``json.Unmarshal`` reads it: one value, then only whitespace (decode.go checkValid)."""
    _bounded(body)
    text = _text(body)
    start = len(text) - len(text.lstrip(_WS))
    value, end = _scan(text, start)
    if text[end:].strip(_WS):
        raise GoJSONError("invalid character after top-level value")
    return value


def _fold(key: str) -> str | None:
    # encoding/json/fold.go foldName, restricted to what can equal an ASCII field name.
    if not key.isascii():
        key = key.replace("\u017f", "s").replace("\u212a", "k")
        if not key.isascii():
            return None
    return key.lower()


def bind_strings(value: Any, fields: tuple[str, ...]) -> dict[str, str]:
    """The string fields ``fields`` of a Go struct after ``Decode`` of ``value`` into it.

    ``fields`` are the struct's json tag names for the string fields the caller needs (all
    lower-case ASCII, none folding to another field of the struct). A top-level ``null`` leaves
    the struct zero (decode.go literalStore); a non-object is an ``UnmarshalTypeError``.
    """
    out = dict.fromkeys(fields, "")
    if value is None:
        return out
    if not isinstance(value, Pairs):
        raise TypeMismatch("cannot unmarshal a non-object into the request")
    for key, item in value:
        if key in out:  # decode.go object: exact name first
            field = key
        else:
            folded = _fold(go_string(key))
            if folded is None or folded not in out:
                continue
            field = folded
        if item is None:  # null leaves the earlier value (decode.go literalStore)
            continue
        if not isinstance(item, str):
            raise TypeMismatch(f"cannot unmarshal into field {field} of type string")
        out[field] = go_string(item)
    return out


def bind_keys(value: Any, *, non_null: bool = False) -> set[str]:
    """The lower-case field names a struct decode of ``value`` could fill (``foldName`` matches).

    With ``non_null``, only keys whose value is not ``null`` (a ``null`` leaves a map or slice nil).
    """
    if not isinstance(value, Pairs):
        return set()
    return {f for f in (_fold(go_string(k)) for k, v in value if not (non_null and v is None)) if f is not None}


def map_get(value: Any, key: str) -> Any:
    """``m[key]`` after ``json.Unmarshal`` into ``map[string]json.RawMessage``: exact key, last wins.

    Returns the Python form of the raw value (``None`` for a JSON ``null``), or ``KeyError`` when
    absent. ``value`` must come from ``unmarshal_whole``; a non-object raises ``TypeMismatch``
    (a top-level ``null`` is an empty map).
    """
    if value is None:
        raise KeyError(key)
    if not isinstance(value, Pairs):
        raise TypeMismatch("cannot unmarshal a non-object into a map")
    found: Any = _ABSENT
    for k, item in value:
        if go_string(k) == key:
            found = item
    if found is _ABSENT:
        raise KeyError(key)
    return found


_ABSENT = object()

# strings.TrimSpace trims unicode.IsSpace: Latin-1 spaces plus the White_Space property.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"


def trim_space(s: str) -> str:
    """Go's ``strings.TrimSpace`` (Python's ``str.strip`` also trims U+001C..U+001F)."""
    return s.strip(_GO_SPACE)
