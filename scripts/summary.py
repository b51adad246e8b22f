"""Print the suite's closing line, summing the host pytest run and the kernel guest run.

    python scripts/summary.py HOST_JUNIT_XML [KERNEL_LOG]

The host run is read from its JUnit XML; the kernel run from the harness's own last
line, `kernel: N passed, N failed`. A missing or unreadable report counts as a failure.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def host_counts(path: Path) -> tuple[int, int]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return 0, 1
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tests = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return tests - failed - skipped, failed


def kernel_counts(path: Path) -> tuple[int, int]:
    try:
        text = path.read_text()
    except OSError:
        return 0, 0  # not run (MESHNET_SKIP_KERNEL=1)
    found = re.findall(r"^kernel: (\d+) passed, (\d+) failed$", text, re.M)
    if not found:
        return 0, 1
    passed, failed = found[-1]
    return int(passed), int(failed)


def main() -> None:
    hp, hf = host_counts(Path(sys.argv[1]))
    kp, kf = kernel_counts(Path(sys.argv[2])) if len(sys.argv) > 2 else (0, 0)
    print(f"host: {hp} passed, {hf} failed; kernel guest: {kp} passed, {kf} failed")
    print(f"tests: {hp + kp} passed, {hf + kf} failed")


if __name__ == "__main__":
    main()
