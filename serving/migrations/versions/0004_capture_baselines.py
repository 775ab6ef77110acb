"""capture_baselines: the operator's frozen baselines of how photos are taken.

Image width, height, aspect and format are compared with a baseline frozen from the clinic's
own traffic (``python -m serving.monitoring freeze-baseline``), not with the training copies;
each freeze adds a row. Nothing existing changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "capture_baselines",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("frozen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("frozen_by", sa.String(64), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("oldest", sa.DateTime(timezone=True), nullable=False),
        sa.Column("newest", sa.DateTime(timezone=True), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_capture_baselines"),
    )
    op.create_index("ix_capture_baselines_frozen_at", "capture_baselines", ["frozen_at"])


def downgrade() -> None:
    # Dropping the table would lose what the operator froze: refuse while it holds any.
    frozen = op.get_bind().execute(sa.text("SELECT count(*) FROM capture_baselines")).scalar_one()
    if frozen:
        raise RuntimeError(
            f"capture_baselines holds {frozen} frozen baselines; schema 0003 cannot store them: "
            "keep 0004 or delete those rows first"
        )
    op.drop_index("ix_capture_baselines_frozen_at", "capture_baselines")
    op.drop_table("capture_baselines")
