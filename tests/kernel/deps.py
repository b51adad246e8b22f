"""Print the Python requirements the guest venv needs, one per line.

Reads [project].dependencies plus the `test` extra from pyproject.toml. The
harness hashes this output to decide when the guest venv must be rebuilt.

Usage: python3 tests/kernel/deps.py path/to/pyproject.toml
"""

import sys
import tomllib


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project.get("dependencies", []))
    reqs += project.get("optional-dependencies", {}).get("test", [])
    for req in reqs:
        print(req)


if __name__ == "__main__":
    main()
