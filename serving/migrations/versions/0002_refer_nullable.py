"""predictions.refer may be NULL: an answer without referral advice.

A version exported without validated referral thresholds is served for its rankings only; its
answers say ``refer: null`` and so do their records. On SQLite the column change rebuilds the
table (``serving.db.engine.migrating`` keeps foreign-key actions off meanwhile, so the rebuild
cannot cascade into the feedback).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.alter_column("refer", existing_type=sa.Boolean(), nullable=True)


def downgrade() -> None:
    # An answer without advice has no refer/no-refer to restore: refuse rather than invent one.
    withheld = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM predictions WHERE refer IS NULL"))
        .scalar_one()
    )
    if withheld:
        raise RuntimeError(
            f"{withheld} predictions were answered without referral advice (refer is NULL); "
            "schema 0001 cannot store them: keep 0002 or delete those records first"
        )
    with op.batch_alter_table("predictions") as batch:
        batch.alter_column("refer", existing_type=sa.Boolean(), nullable=False)
