"""refusals: uploads the image-quality and out-of-distribution gate refused to diagnose.

They are kept apart from ``predictions`` so the drift windows and the live figures never see
them; the monitoring page counts them per day and reason. Nothing existing changes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "refusals",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=True),
        sa.Column("request_fingerprint", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("message", sa.String(1000), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=True),
        sa.Column("model_version", sa.String(32), nullable=True),
        sa.Column("ood_score", sa.Float(), nullable=True),
        sa.Column("features", sa.JSON(), nullable=True),
        sa.Column("image_sha256", sa.String(64), nullable=True),
        sa.Column("image_format", sa.String(8), nullable=True),
        sa.Column("image_width", sa.Integer(), nullable=True),
        sa.Column("image_height", sa.Integer(), nullable=True),
        sa.Column("image_stored", sa.Boolean(), nullable=False),
        sa.Column("answer", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_refusals"),
        sa.UniqueConstraint("client_id", "request_id", name="uq_refusals_request"),
    )
    op.create_index("ix_refusals_created_at", "refusals", ["created_at"])
    op.create_index("ix_refusals_reason", "refusals", ["reason"])


def downgrade() -> None:
    op.drop_index("ix_refusals_reason", "refusals")
    op.drop_index("ix_refusals_created_at", "refusals")
    op.drop_table("refusals")
