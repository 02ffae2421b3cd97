"""The README's proxy recipes (``### Recipes``), run as written.

Each recipe is taken verbatim from the README and run, after the README's own
``eval "$(ollama-credential-helper proxy --print-env)"`` line, by the real client
(curl, the ``ollama`` npm package under Node, LiteLLM, pydantic-ai) against the
installed proxy in front of the loopback stand-in, which verifies every scheme-2
signature from the bytes on the wire. Streaming recipes are timed: the first
words must reach the recipe's stdout (a pipe) well before the last.

The clients are pinned and installed by ``.ci/run`` into ``build/recipe-clients``
(``venv/``: the ``[clients]`` extra; ``node/``: ``ollama@OLLAMA_JS``), apart from the
test environment. Without them these tests skip and say what to run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, helper_executable
from credential_helper.standin import REPLY_WORDS
from faults import ScriptedServer

REPLY = "".join(REPLY_WORDS)
README = (ROOT / "README.md").read_text()
RECIPES_SECTION = README.split("\n### Recipes\n", 1)[1].split("\n## ", 1)[0]
RECIPES = dict(re.findall(r"<!-- recipe:([\w-]+) -->\n```\w+\n(.*?)\n```", RECIPES_SECTION, re.S))

CLIENTS = Path(os.environ.get("RECIPE_CLIENTS", ROOT / "build" / "recipe-clients"))
CLIENTS_PYTHON = CLIENTS / "venv" / "bin" / "python"
OLLAMA_JS = "0.6.4"  # the version .ci/run installs; checked against the installed package
NODE_MODULES = CLIENTS / "node" / "node_modules"
INSTALL_HINT = "run the recipe-clients step of .ci/run"

# The stand-in pauses this long between streamed chunks (4 words, then the end):
# long enough that a client holding the stream back is seen to.
CHUNK_DELAY = 0.3


def needs_python_client(module: str):
    present = (
        CLIENTS_PYTHON.exists()
        and subprocess.run(
            [str(CLIENTS_PYTHON), "-c", f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"],
            capture_output=True,
        ).returncode
        == 0
    )
    return pytest.mark.skipif(not present, reason=f"{module} is not installed in {CLIENTS / 'venv'}: {INSTALL_HINT}")


needs_node_client = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_MODULES / "ollama" / "package.json").exists(),
    reason=f"node or the ollama npm package ({NODE_MODULES}) is missing: {INSTALL_HINT}",
)


def test_every_recipe_is_tested():
    assert sorted(RECIPES) == ["curl", "litellm", "ollama-js", "pydantic-ai"]


def test_the_recipes_sit_at_the_end_of_the_proxy_section():
    proxy_section = README.split("\n## Any tool, through the signing proxy\n", 1)[1].split("\n## ", 1)[0]
    assert "\n### Recipes\n" in proxy_section
    assert proxy_section.index("### Recipes") < proxy_section.index("As a `systemd --user` service")


def test_the_readme_names_the_pinned_client_versions():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and newer

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["clients"]
    pins = dict(re.fullmatch(r"([\w-]+)(?:\[\w+\])?==([\w.]+)", pin).groups() for pin in extras)
    assert (
        f'npm install --prefix "$dir/node" --no-save --no-audit --no-fund --ignore-scripts ollama@{OLLAMA_JS} '
        in (ROOT / ".ci" / "run").read_text()
    )
    named = RECIPES_SECTION.split("\n\n", 1)[0]
    assert f"`ollama` {OLLAMA_JS} from npm" in named
    for name, version in pins.items():
        assert f"`{name}` {version}" in named


# --- running a recipe ---------------------------------------------------------------------------


def after_print_env(proxy, command: str) -> list[str]:
    """bash running the README's eval line (for this proxy's port), then the recipe."""
    helper = shlex.quote(helper_executable()[0])
    return ["bash", "-c", f'eval "$({helper} proxy --print-env --listen {proxy.host})" && {command}']


def run_timed(argv: list[str], environment: dict, cwd: Path, timeout: float = 90) -> tuple[list[tuple[float, str]], str, int]:
    """Run with stdout a pipe; every read as (seconds since start, text so far)."""
    started = time.monotonic()
    process = subprocess.Popen(
        argv, env=environment, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    seen: list[tuple[float, str]] = []
    text = b""
    try:
        while True:
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            text += chunk
            seen.append((time.monotonic() - started, text.decode("utf-8", "replace")))
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{argv[-1][:80]!r} ran past {timeout}s")
        code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    stderr = process.stderr.read().decode("utf-8", "replace")
    process.stderr.close()
    return seen, stderr, code


def arrival(seen: list[tuple[float, str]], text: str, occurrence: int = 1) -> float:
    """When the output first held ``text`` ``occurrence`` times."""
    return next(t for t, so_far in seen if so_far.count(text) >= occurrence)


def assert_streamed(seen: list[tuple[float, str]], occurrence: int = 1) -> None:
    """The first word reached stdout while the stand-in was still sending the rest
    (it pauses CHUNK_DELAY after each word): a client that buffers shows all at once."""
    first = arrival(seen, REPLY_WORDS[0], occurrence)
    last = arrival(seen, REPLY_WORDS[-1], occurrence)
    assert last - first >= 2 * CHUNK_DELAY, f"the stream arrived all at once: {seen!r}"


def assert_signed_upstream(upstream, proxy, expected: list[tuple[str, str]], also: tuple[str, ...] = ()) -> None:
    """Every request reached the stand-in signed with the key, never with the local
    token: the ``expected`` ones in order, besides any number to the paths in ``also``."""
    assert upstream.refused_requests == []
    routes = [(method, target.split("?")[0]) for method, target in upstream.signed_requests]
    assert [route for route in routes if route[1] not in also] == expected, routes
    for headers in upstream.request_headers:
        assert all(proxy.token not in value for _, value in headers)
        authorization = dict((k.lower(), v) for k, v in headers)["authorization"]
        assert authorization.startswith("AAAAC3NzaC1lZDI1NTE5")


@pytest.fixture
def slow_upstream(upstream):
    upstream.chunk_delay = CHUNK_DELAY
    return upstream


@pytest.fixture
def recipe_env(proxy_env):
    # Nothing the test environment holds may stand in for what the eval line sets.
    environment = {k: v for k, v in proxy_env.items() if not k.startswith(("OPENAI_", "OLLAMA_", "ANTHROPIC_", "LITELLM_"))}
    # PYTHONUNBUFFERED (set where these tests are often run) would hide a recipe that
    # forgets to flush; a user's shell does not have it.
    for name in ("NODE_PATH", "NODE_OPTIONS", "PYTHONUNBUFFERED", "PYTHONPATH"):
        environment.pop(name, None)
    return environment


# --- curl -N ------------------------------------------------------------------------------------


def test_curl_recipe_streams_into_a_pipe(slow_upstream, start_proxy, recipe_env, tmp_path):
    proxy = start_proxy("--upstream", slow_upstream.base_url)
    seen, stderr, code = run_timed(after_print_env(proxy, RECIPES["curl"]), recipe_env, tmp_path)
    assert code == 0, stderr
    lines = [json.loads(line) for line in seen[-1][1].splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == REPLY and lines[-1]["done"] is True
    assert_streamed(seen)
    assert_signed_upstream(slow_upstream, proxy, [("POST", "/api/chat")])


# --- ollama-js ----------------------------------------------------------------------------------


def node_script(tmp_path: Path, source: str) -> Path:
    """An ES module beside a node_modules that holds the pinned ollama package."""
    (tmp_path / "node_modules").symlink_to(NODE_MODULES, target_is_directory=True)
    script = tmp_path / "chat.mjs"
    script.write_text(source)
    return script


@needs_node_client
def test_ollama_js_is_the_pinned_version():
    assert json.loads((NODE_MODULES / "ollama" / "package.json").read_text())["version"] == OLLAMA_JS


@needs_node_client
def test_ollama_js_recipe_streams_a_chat(slow_upstream, start_proxy, recipe_env, tmp_path):
    proxy = start_proxy("--upstream", slow_upstream.base_url)
    node_script(tmp_path, RECIPES["ollama-js"])
    seen, stderr, code = run_timed(after_print_env(proxy, "node chat.mjs"), recipe_env, tmp_path)
    assert code == 0, stderr
    assert seen[-1][1] == REPLY + "\n"
    assert_streamed(seen)
    assert_signed_upstream(slow_upstream, proxy, [("POST", "/api/chat")])
    user_agent = dict((k.lower(), v) for k, v in slow_upstream.request_headers[0])["user-agent"]
    assert user_agent.startswith(f"ollama-js/{OLLAMA_JS} ")


@needs_node_client
def test_ollama_js_sends_no_origin_and_the_header_it_is_given(recipe_env, tmp_path):
    """What the proxy would refuse (a browser Origin, Sec-Fetch-Site) Node's fetch
    (undici) never sends, as seen on the wire; the Authorization header is the one the recipe passes."""
    node_script(tmp_path, RECIPES["ollama-js"])
    body = json.dumps({"model": "m", "message": {"role": "assistant", "content": REPLY}, "done": True}).encode() + b"\n"
    from faults import reply

    with ScriptedServer(reply("200 OK", body, {"Content-Type": "application/x-ndjson"})) as server:
        environment = dict(recipe_env, OLLAMA_HOST=f"http://{server.host}", OLLAMA_API_KEY="recipe-test-token")
        done = subprocess.run(["node", "chat.mjs"], env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == REPLY + "\n"
    head = server.requests[0].decode("latin-1").lower()
    assert head.startswith("post /api/chat http/1.1\r\n")
    assert "\r\nauthorization: bearer recipe-test-token\r\n" in head
    # undici sends Sec-Fetch-Mode: cors, which the proxy does not look at.
    assert "\r\norigin:" not in head and "\r\nsec-fetch-site:" not in head


@needs_node_client
@pytest.mark.parametrize("method", ["webSearch", "webFetch"])
def test_ollama_js_web_calls_bypass_the_proxy_with_its_headers(recipe_env, tmp_path, method):
    """The README's warning: these two go to https://ollama.com whatever ``host`` is,
    carrying the client's headers (seen through a recording ``fetch``; nothing is sent)."""
    constructor = (
        RECIPES["ollama-js"]
        .split("const stream", 1)[0]
        .replace(
            "headers: {",
            "fetch: async (url, init) => { console.log(JSON.stringify([String(url), init.headers])); throw new Error('recorded') },\n  headers: {",
        )
    )
    node_script(
        tmp_path, constructor + f"await ollama.{method}({{ query: 'q', url: 'https://example.com/' }}).catch(() => {{}})\n"
    )
    environment = dict(recipe_env, OLLAMA_HOST="http://127.0.0.1:9", OLLAMA_API_KEY="recipe-test-token")
    done = subprocess.run(["node", "chat.mjs"], env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    url, headers = json.loads(done.stdout.splitlines()[0])
    assert url.startswith("https://ollama.com/api/web_")
    assert headers["Authorization"] == "Bearer recipe-test-token"


# --- LiteLLM ------------------------------------------------------------------------------------


@needs_python_client("litellm")
def test_litellm_recipe_ollama_chat_and_openai(slow_upstream, start_proxy, recipe_env, tmp_path):
    proxy = start_proxy("--upstream", slow_upstream.base_url)
    (tmp_path / "recipe.py").write_text(RECIPES["litellm"])
    # LiteLLM fetches a model cost map at import unless told to use its own copy
    # (litellm/litellm_core_utils/get_model_cost_map.py); the tests run offline.
    environment = dict(recipe_env, LITELLM_LOCAL_MODEL_COST_MAP="True")
    seen, stderr, code = run_timed(after_print_env(proxy, f"{shlex.quote(str(CLIENTS_PYTHON))} recipe.py"), environment, tmp_path)
    assert code == 0, stderr[-3000:]
    assert seen[-1][1] == f"{REPLY}\n{REPLY}\n"
    assert_streamed(seen, 1)
    assert_streamed(seen, 2)
    # LiteLLM asks /api/show about the model before each call (its model-info lookup).
    assert_signed_upstream(slow_upstream, proxy, [("POST", "/api/chat"), ("POST", "/v1/chat/completions")], also=("/api/show",))


# --- pydantic-ai --------------------------------------------------------------------------------


@needs_python_client("pydantic_ai")
def test_pydantic_ai_recipe(upstream, start_proxy, recipe_env, tmp_path):
    proxy = start_proxy("--upstream", upstream.base_url)
    (tmp_path / "recipe.py").write_text(RECIPES["pydantic-ai"])
    done = subprocess.run(
        after_print_env(proxy, f"{shlex.quote(str(CLIENTS_PYTHON))} recipe.py"),
        env=recipe_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == REPLY + "\n"
    assert_signed_upstream(upstream, proxy, [("POST", "/v1/chat/completions")])
