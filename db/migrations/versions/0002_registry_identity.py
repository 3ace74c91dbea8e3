"""Each registry gets an identity of its own, and a place to hold an implausible change back for one sync.

registry_id: random, made with the registry (here for one that exists already). The hot cache and the event
stream carry it, so a cache or stream left by another registry (a recreated or restored database) is told
apart from this one's instead of being trusted.
pending_change: a mass change held back as suspect (for example most contracts changing status at once): what
it was, so that the same change seen again in the next sync is applied.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the registry identity and the held-back change."""
    # Plain ADD COLUMN, which SQLite does in place: a batch copy of the table would break the tokens_live view.
    # The identity stays nullable in the table; every registry gets one here, new ones included.
    op.add_column("registry_state", sa.Column("registry_id", sa.Text(), nullable=True))
    op.add_column("registry_state", sa.Column("pending_change", sa.Text(), nullable=True))
    op.execute(sa.text("UPDATE registry_state SET registry_id = :identity").bindparams(identity=secrets.token_hex(8)))


def downgrade() -> None:
    """Downgrades are not supported: restore a backup taken before the upgrade."""
    raise NotImplementedError("tokenwatch does not downgrade a registry: restore a backup taken before the upgrade")
