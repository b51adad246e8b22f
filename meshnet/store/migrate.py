"""`python -m meshnet.store.migrate DB`: bring a state database to the newest migration.

Store.upgrade runs this in a child process, so the agent itself never loads SQLAlchemy
and alembic (about 25 MB of RSS that would stay for the agent's life after the one
migration a new or upgraded host needs). Prints one line and exits 1 on failure.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from alembic import command

    from meshnet.store.db import alembic_config

    try:
        command.upgrade(alembic_config(f"sqlite:///{argv[0]}"), "head")
    except Exception as e:
        why = str(getattr(e, "orig", None) or e).splitlines()
        print(why[0] if why else type(e).__name__, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
