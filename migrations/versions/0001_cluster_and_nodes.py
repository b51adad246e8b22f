"""cluster and nodes

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("secret_hash", sa.String(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
    )
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("identity_pub", sa.String(), nullable=False),
        sa.Column("wg_pub", sa.String(), nullable=False),
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("control", sa.String(), nullable=False),
        sa.Column("transit_ip", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("sig", sa.String(), nullable=False),
        sa.Column("received", sa.Float(), nullable=False),
    )
    op.create_index("ix_nodes_owner", "nodes", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_nodes_owner", table_name="nodes")
    op.drop_table("nodes")
    op.drop_table("cluster")
