"""services and tasks

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _replicated() -> list[sa.Column]:
    return [
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("sig", sa.String(), nullable=False),
        sa.Column("received", sa.Float(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("networks", sa.JSON(), nullable=False),
        sa.Column("replicas", sa.BigInteger(), nullable=False),
        sa.Column("endpoint_mode", sa.String(), nullable=False),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("restart", sa.String(), nullable=False),
        sa.Column("constraints", sa.JSON(), nullable=False),
        sa.Column("command", sa.JSON(), nullable=False),
        sa.Column("vips", sa.JSON(), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("spec", sa.BigInteger(), nullable=False),
        *_replicated(),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("node", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("endpoints", sa.JSON(), nullable=False),
        sa.Column("since", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.String(), nullable=False),
        sa.Column("restarts", sa.BigInteger(), nullable=False),
        sa.Column("spec", sa.BigInteger(), nullable=False),
        *_replicated(),
    )
    for table, col in (("services", "owner"), ("services", "name"), ("tasks", "owner"),
                       ("tasks", "service")):
        op.create_index(f"ix_{table}_{col}", table, [col])


def downgrade() -> None:
    op.drop_table("tasks")
    op.drop_table("services")
