"""Turn the guest's JUnit XML into the harness's closing line.

Prints `kernel: N passed, N failed` where failed counts failures and errors.
Usage: python3 tests/kernel/summary.py results/junit.xml
"""

import sys
import xml.etree.ElementTree as ET


def main() -> None:
    root = ET.parse(sys.argv[1]).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tests = failed = skipped = 0
    for suite in suites:
        tests += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    print(f"kernel: {tests - failed - skipped} passed, {failed} failed")


if __name__ == "__main__":
    main()
