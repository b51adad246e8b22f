"""networks, endpoints, ipam blocks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
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
        "networks",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("driver", sa.String(), nullable=False),
        sa.Column("subnet", sa.String(), nullable=False),
        sa.Column("gateway", sa.String(), nullable=False),
        sa.Column("vni", sa.BigInteger(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        *_replicated(),
    )
    op.create_table(
        "endpoints",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("network", sa.String(), nullable=False),
        sa.Column("node", sa.String(), nullable=False),
        sa.Column("ip", sa.String(), nullable=False),
        sa.Column("mac", sa.String(), nullable=False),
        sa.Column("netns", sa.String(), nullable=False),
        sa.Column("owns_netns", sa.Boolean(), nullable=False),
        sa.Column("ifname", sa.String(), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        *_replicated(),
    )
    op.create_table(
        "ipam_blocks",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("network", sa.String(), nullable=False),
        sa.Column("cidr", sa.String(), nullable=False),
        *_replicated(),
    )
    for table, cols in (("networks", ["owner"]), ("networks", ["name"]), ("endpoints", ["owner"]),
                        ("endpoints", ["name"]), ("endpoints", ["network"]),
                        ("ipam_blocks", ["owner"]), ("ipam_blocks", ["network"])):
        op.create_index(f"ix_{table}_{cols[0]}", table, cols)


def downgrade() -> None:
    for table in ("ipam_blocks", "endpoints", "networks"):
        op.drop_table(table)
