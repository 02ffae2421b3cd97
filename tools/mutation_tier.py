"""Which tests mutmut runs (tools/mutation.sh loads this as a pytest plugin, issue 21).

The socket-free unit tier (`pytest -m unit`, tests/conftest.py) plus the in-process
files named below: they run the real server and engine on port 0 in this process
(tests/serving.py's ``InProcess``), so mutmut sees which engine functions they call
and each mutant's run stays short. Process-tier tests that start the installed
executable are left out: a subprocess runs the unmutated code that mutmut cannot
see, and each one costs seconds. Interop tests are left out: they need software
that `.ci/run` installs.

Each name is checked against a file in tests/: a renamed file fails the run rather
than quietly dropping its tests (except for MUTATION_TREE, an older commit's tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

IN_PROCESS_FILES = {
    "test_engine_body.py",
    "test_engine_limits.py",
    "test_engine_in_process.py",
    "test_engine_edges.py",
    "test_core_flow.py",  # one test needs an event loop's socketpair; the rest are unit
    "test_loop.py",  # serve/loop.py and serve/steps.py on loopback socketpairs
}
# The fixtures that start a process (tests/conftest.py PROCESS_FIXTURES, less the
# in-process ones): a test in an in-process file that uses one is left out.
SUBPROCESS_FIXTURES = {"run", "start_serving", "start_proxy", "start_gate", "standin", "streaming_standin", "upstream"}


def _check_names(config: pytest.Config) -> None:
    if os.environ.get("MUTATION_TREE"):
        return  # an older commit's tests (a "before") may lack files named here since
    tests = Path(str(config.rootpath)) / "tests"
    missing = sorted(name for name in IN_PROCESS_FILES if not (tests / name).exists())
    if missing:
        raise pytest.UsageError(f"tools/mutation_tier.py names files that tests/ does not have: {missing}")


def chosen(item: pytest.Item) -> bool:
    if item.get_closest_marker("unit") is not None:
        return True
    return item.path.name in IN_PROCESS_FILES and not SUBPROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ()))


@pytest.hookimpl(trylast=True)  # after tests/conftest.py has given each test its tier
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _check_names(config)
    kept, dropped = [], []
    for item in items:
        (kept if chosen(item) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.hookimpl(trylast=True)  # after tests/conftest.py's own pytest_unconfigure
def pytest_unconfigure(config: pytest.Config) -> None:
    # tests/conftest.py arms faulthandler to end a finished run's process 30 s later if
    # a thread hangs at exit. mutmut runs pytest inside its own long-lived process, so
    # that would end mutmut itself: disarm it (each mutant's run keeps its own limits).
    import faulthandler

    faulthandler.cancel_dump_traceback_later()
