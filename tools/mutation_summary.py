"""Per-module counts from `mutmut results --all true` on stdin (tools/mutation.sh).

The kill ratio is (killed + timeout) / total: a mutant that makes a test hang has
been detected. "no tests" (no chosen test calls the function) counts as survived.
Mutants a run did not try (a sample: `tools/mutation.sh ... -- 'GLOB'`) are "not
checked": left out of the total and counted apart."""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict

LINE = re.compile(r"^\s*(?P<name>\S+)__mutmut_\d+: (?P<status>.+)$")


def module_of(name: str) -> str:
    # credential_helper.urls.x_function or credential_helper.serve.sign.xǁClassǁmethod
    return re.split(r"\.x_|\.xǁ", name, maxsplit=1)[0]


def main() -> int:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for line in sys.stdin:
        match = LINE.match(line)
        if match:
            counts[module_of(match["name"])][match["status"].strip()] += 1
    header = f"{'module':40} {'total':>6} {'killed':>6} {'survived':>8} {'timeout':>7} {'no tests':>8} {'other':>5} {'ratio':>6}"
    print(header + f" {'unsampled':>9}")
    for module, c in sorted(counts.items()):
        unsampled = c.pop("not checked", 0)
        total = sum(c.values())
        killed, timeout, survived, untested = c["killed"], c["timeout"], c["survived"], c["no tests"]
        other = total - killed - timeout - survived - untested
        ratio = (killed + timeout) / total if total else 0.0
        print(f"{module:40} {total:6} {killed:6} {survived:8} {timeout:7} {untested:8} {other:5} {ratio:6.1%} {unsampled:9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
