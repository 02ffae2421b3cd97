"""The README and man page, held to what the program does.

The Quick start's commands, the provider example and the man page are checked
against the real program so that none of them can drift into fiction.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, helper_executable
from credential_helper.standin import StandIn

README = (ROOT / "README.md").read_text()
MAN = (ROOT / "man" / "ollama-credential-helper.1").read_text()
COMMANDS = ["get", "sign", "erase", "key", "whoami", "doctor", "proxy", "gate"]


def shell_blocks_after(heading: str) -> list[str]:
    section = README.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.S)


def test_quick_start_is_exactly_two_commands():
    blocks = shell_blocks_after("## Quick start")
    assert len(blocks) == 2 and all("\n" not in block for block in blocks)


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = shell_blocks_after("## Quick start")[1]
    assert test_command in (ROOT / ".ci" / "run").read_text()


@pytest.mark.process
def test_quick_start_demo_runs_the_full_flow(env):
    demo_command = shell_blocks_after("## Quick start")[0]
    assert demo_command.endswith("python -m credential_helper.demo")
    done = subprocess.run([sys.executable, "-m", "credential_helper.demo"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "-> 401, WWW-Authenticate: Bearer realm=" in out
    assert "source ed25519" in out and "-> 200:" in out
    assert "same token: True; exchanges so far: 1" in out
    assert "demo-user <demo@example.com>, plan free" in out


@pytest.mark.process
def test_demo_help_prints_usage_and_runs_nothing(env):
    # Break caught: `python -m credential_helper.demo --help` ran the whole demo.
    done = subprocess.run(
        [sys.executable, "-m", "credential_helper.demo", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith("usage: python -m credential_helper.demo") and "stand-in for ollama.com" in done.stdout
    assert "== 1." not in done.stdout  # no step ran


def test_demo_main_runs_the_demo_without_arguments_and_only_help_with_help(monkeypatch, capsys):
    from credential_helper import demo

    ran = []
    monkeypatch.setattr(demo, "run", lambda: ran.append(True) or 0)
    assert demo.main([]) == 0 and ran == [True]
    with pytest.raises(SystemExit) as stopped:
        demo.main(["--help"])
    assert stopped.value.code == 0 and ran == [True] and "usage:" in capsys.readouterr().out


def provider_example() -> str:
    example = README.split("<!-- provider-example:start -->", 1)[1].split("<!-- provider-example:end -->", 1)[0]
    return re.search(r"```python\n(.*?)\n```", example, re.S).group(1)


def key_only_environment(tmp_path, keys) -> dict[str, str]:
    home = tmp_path / "only-a-key"
    (home / ".ollama").mkdir(parents=True)
    shutil.copy(keys / "ed25519-a", home / ".ollama" / "id_ed25519")
    os.chmod(home / ".ollama" / "id_ed25519", 0o600)
    bin_dir = os.path.dirname(helper_executable()[0])
    return {
        "HOME": str(home),
        "PATH": bin_dir + os.pathsep + "/usr/bin:/bin",
        "XDG_CACHE_HOME": str(home / ".cache"),
    }


@pytest.mark.process
def test_provider_example_runs_as_written(tmp_path, keys, public_line):
    script = tmp_path / "provider.py"
    script.write_text(provider_example())
    environment = key_only_environment(tmp_path, keys)
    with StandIn() as server:
        server.authorize(public_line("ed25519-a"), name="provider-user")
        environment["OLLAMA_CLOUD_BASE_URL"] = server.base_url
        environment["OLLAMA_REGISTRY_URL"] = server.base_url
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=environment, timeout=120)
        assert server.exchanges == 1
    assert done.returncode == 0, done.stderr
    assert "manifest schema: 2" in done.stdout
    assert "models: gpt-oss:120b-cloud, qwen3-coder:480b-cloud" in done.stdout
    assert "account: provider-user" in done.stdout


@pytest.mark.process
def test_provider_example_never_carries_the_token_through_a_redirect(tmp_path, keys, public_line):
    """The example's own functions, run verbatim: a registry that redirects the
    authenticated retry to another host must not hand that host the token."""
    from faults import ScriptedServer, reply

    definitions = provider_example().split("\nmanifest = ", 1)[0]
    with ScriptedServer(reply("200 OK", b"{}")) as elsewhere, StandIn() as registry:
        registry.authorize(public_line("ed25519-a"))
        target = f"{registry.base_url}/v2/library/gpt-oss/manifests/latest"
        # The registry's 401 challenge is real; its authenticated answer is a
        # redirect to another loopback host.
        registry.redirect_authenticated = f"http://{elsewhere.host}/landing"
        script = tmp_path / "redirected.py"
        script.write_text(
            definitions
            + f"\ntry:\n    registry_get({target!r})\nexcept urllib.error.HTTPError as err:\n    print('stopped at', err.code)\n"
        )
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env=key_only_environment(tmp_path, keys), timeout=120
        )
        assert registry.exchanges == 1, done.stderr
    assert done.returncode == 0, done.stderr
    assert "stopped at 302" in done.stdout
    assert elsewhere.requests == [], "the redirect was followed"


# --- man page ---------------------------------------------------------------------------


def _options(text: str) -> set[str]:
    return set(re.findall(r"--[a-z][a-z-]*", text.replace("\\-", "-")))


def _help(command: list[str]) -> str:
    return subprocess.run([*helper_executable(), *command, "--help"], capture_output=True, text=True, check=True).stdout


def _man_synopsis(command: str) -> str:
    synopsis = MAN.split(".SH SYNOPSIS", 1)[1].split(".SH", 1)[0]
    block = synopsis.split(f".B ollama-credential-helper {command}\n", 1)[1]
    return block.split(".PP", 1)[0]


@pytest.mark.process
@pytest.mark.parametrize("command", COMMANDS)
def test_man_synopsis_matches_help_for_each_command(command):
    assert _options(_man_synopsis(command)) == _options(_help([command])) - {"--help"}


@pytest.mark.process
def test_man_documents_every_option_and_command():
    options_section = MAN.split(".SH OPTIONS", 1)[1].split(".SH", 1)[0]
    every = set().union(*(_options(_help([c])) for c in COMMANDS), _options(_help([])))
    assert every <= _options(options_section)
    commands_section = MAN.split(".SH COMMANDS", 1)[1].split(".SH", 1)[0]
    assert re.findall(r"^\.TP\n\.B (\w+)$", commands_section, re.M) == COMMANDS
    listed = re.findall(r"^    (\w+)\s", _help([]), re.M)
    assert listed == COMMANDS


@pytest.mark.process
def test_the_key_line_format_is_the_same_in_gate_help_and_the_man_page():
    # gate --help said '<type> <key> [name] [endpoint,...]' while the man page's FILES had
    # '[options]' before it: every spelling of the line's format is the one in FILES.
    files = MAN.split(".SH FILES", 1)[1].split(".SH", 1)[0]
    spellings = set(re.findall(r'"((?:\[options\] )?<type> <key> \[name\] \[endpoint,\.\.\.\])"', MAN))
    assert spellings == {"[options] <type> <key> [name] [endpoint,...]"} and spellings.pop() in files
    shown = " ".join(_help(["gate"]).split())
    assert re.findall(r"'([^']*<type> <key>[^']*)'", shown) == ["[options] <type> <key> [name] [endpoint,...]"]


def _readme_command_rows() -> dict[str, str]:
    """The README's "Commands and output" table: command name -> its first cell."""
    section = README.split("\n## Commands and output\n", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)([^`]*)`", section, re.M)
    return {name: rest.replace("\\|", "|") for name, rest in rows}


def test_the_readme_commands_table_has_a_row_per_command():
    assert list(_readme_command_rows()) == COMMANDS


@pytest.mark.process
@pytest.mark.parametrize("command", COMMANDS)
def test_the_readme_commands_table_row_lists_exactly_the_options_of_help(command):
    """A user reads the table, not --help: an option missing there is one they never find."""
    row = _options(_readme_command_rows()[command])
    listed = _options(_help([command])) - {"--help"}
    assert (sorted(listed - row), sorted(row - listed)) == ([], []), "(missing from the README row, not in --help)"


def test_the_readme_names_every_pinned_runtime_dependency():
    block = (ROOT / "pyproject.toml").read_text().split("\ndependencies = [", 1)[1].split("\n]", 1)[0]
    pinned = re.findall(r'^\s*"([\w.-]+==[\w.]+)"', block, re.M)
    sentence = README.split("Runtime dependencies, pinned:", 1)[1].split("\n\n", 1)[0]
    assert pinned and [pin for pin in pinned if f"`{pin}`" not in sentence] == []


def test_the_readme_names_every_benchmark():
    section = README.split("\n## Development\n", 1)[1]
    scripts = sorted(path.name for path in (ROOT / "benchmarks").glob("*.py") if not path.name.startswith("_"))
    assert scripts and [name for name in scripts if f"`{name}`" not in section and f"benchmarks/{name}" not in section] == []


def test_man_page_has_the_required_sections():
    sections = re.findall(r"^\.SH (.+)$", MAN, re.M)
    assert sections == [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "COMMANDS",
        "OPTIONS",
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "EXAMPLES",
        "SEE ALSO",
    ]


@pytest.mark.process
@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
@pytest.mark.parametrize("device", [[], ["-Tutf8"], ["-Tutf8", "-rLL=60n"], ["-Tutf8", "-rLL=100n"], ["-Tutf8", "-rLL=120n"]])
def test_man_page_is_warning_free(device):
    # Break caught: -Tutf8 (what man -l renders with) warned "cannot adjust line" at the
    # --metrics-listen metric names, long words that filled a line each.
    done = subprocess.run(
        ["groff", "-man", "-ww", "-z", *device, str(ROOT / "man" / "ollama-credential-helper.1")], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stderr


def test_install_instructions_work_on_an_externally_managed_python():
    # Break caught: the README before (python3 -m pip install ., refused by Debian's and Ubuntu's Python,
    # PEP 668; pip install 'ollama-credential-helper[httpx]', a release that is not on PyPI).
    commands = "\n".join(re.findall(r"```(?:sh)?\n(.*?)```", README, re.S))
    assert "python3 -m pip install" not in commands
    assert not re.search(r"pip install '?ollama-credential-helper", README)
    install = README.split("## Install", 1)[1].split("\n## ", 1)[0]
    assert "python3 -m venv" in install and "pipx install ." in install and "not published on PyPI" in install


@pytest.mark.process
@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_man_pages_json_field_lists_render_with_their_quotes():
    # Break caught: writing them as macro arguments (.B {"token", "token_type"}): roff takes an argument that
    # starts with a double quote as quoted, and the page showed {"token", token_type , expires_at , source }.
    done = subprocess.run(
        ["groff", "-man", "-Tascii", "-P-cbou", "-rLL=1000n", "-rHY=0", str(ROOT / "man" / "ollama-credential-helper.1")],
        capture_output=True,
        text=True,
        check=True,
    )
    lists = re.findall(r"\{\"[^{}]*(?:\{[^{}]*\}[^{}]*)*\}", done.stdout)
    fields = {
        "token",
        "token_type",
        "expires_at",
        "source",
        "realm",
        "nonce",
        "url",
        "authorization",
        "ts",
        "error",
        "status",
        "email",
        "plan",
        "checks",
        "detail",
        "fix",
        "ok",
    }
    assert len(lists) >= 7 and fields <= {name for text in lists for name in re.findall(r'"(\w+)"', text)}, lists
    for text in lists:
        assert not re.search(r"[{,\[]\s*[a-z_]+\s*[,:}\]]", text), text  # every name in quotes


# --- the client snippets ------------------------------------------------------------------------

CLIENT_EXAMPLES = dict(re.findall(r"<!-- client-example:(\w+) -->\n```python\n(.*?)\n```", README, re.S))
EXPECTED_OUTPUT = {
    "ollama": ["['gpt-oss:120b-cloud', 'qwen3-coder:480b-cloud']", "Hello from the stand-in.", "Hello from the stand-in."],
    "openai": ["Hello from the stand-in.", "Hello from the stand-in."],
    "httpx": ["docs-user 2"],
    "requests": ["docs-user", "2"],
    "langchain": ["Hello from the stand-in."],
}


def test_every_client_has_a_tested_example():
    assert sorted(CLIENT_EXAMPLES) == sorted(EXPECTED_OUTPUT)


@pytest.mark.process
@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUT))
def test_client_example_runs_as_written(tmp_path, keys, public_line, name):
    script = tmp_path / f"example_{name}.py"  # not httpx.py: it would shadow the library
    script.write_text(CLIENT_EXAMPLES[name])
    environment = key_only_environment(tmp_path, keys)
    with StandIn() as api, StandIn() as registry:
        for server in (api, registry):
            server.authorize(public_line("ed25519-a"), name="docs-user")
        environment["OLLAMA_CLOUD_BASE_URL"] = api.base_url
        environment["OLLAMA_REGISTRY_URL"] = registry.base_url
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=environment, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.splitlines() == EXPECTED_OUTPUT[name]
        assert api.signed_requests and api.refused_requests == []
        assert registry.exchanges == (1 if name in ("httpx", "requests") else 0)
