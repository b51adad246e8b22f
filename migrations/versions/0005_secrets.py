"""secrets (rotated join secret)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secrets",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("secret", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("sig", sa.String(), nullable=False),
        sa.Column("received", sa.Float(), nullable=False),
    )
    op.create_index("ix_secrets_owner", "secrets", ["owner"])


def downgrade() -> None:
    op.drop_table("secrets")
