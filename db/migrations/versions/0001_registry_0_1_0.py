"""The registry as tokenwatch 0.1.0 created it: tokens, token_history, sync_runs, registry_state, tokens_live.

0.1.0 created this schema with SQLAlchemy's create_all and kept no version table; a registry it wrote is
recognised by its tables and stamped with this revision instead of running it (tokenwatch/db/migrate.py).
Frozen: the tables are written out here, never taken from db/schema.py, which moves on.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TOKENS_LIVE = """
CREATE VIEW tokens_live AS
SELECT
  t.symbol,
  t.status,
  t.contract_status,
  t.is_new,
  t.listed_at,
  t.first_seen,
  CASE WHEN t.status = 'active' AND t.missing_since IS NULL AND s.last_fetched_at > t.last_seen
    THEN s.last_fetched_at ELSE t.last_seen END AS last_seen,
  t.delisted_at,
  t.missing_since,
  t.root_symbol,
  t.contract_type,
  t.first_open_date,
  t.expire_date,
  t.settle_date,
  t.base_currency,
  t.quote_currency,
  t.settle_currency,
  t.max_order_qty,
  t.max_price,
  t.lot_size,
  t.tick_size,
  t.index_price_tick_size,
  t.multiplier,
  t.initial_margin,
  t.maintain_margin,
  t.max_risk_limit,
  t.min_risk_limit,
  t.risk_step,
  t.maker_fee_rate,
  t.taker_fee_rate,
  t.maker_fix_fee,
  t.taker_fix_fee,
  t.settlement_fee,
  t.max_leverage,
  t.is_deleverage,
  t.is_quanto,
  t.is_inverse,
  t.support_cross,
  t.mark_method,
  t.fair_method,
  t.funding_base_symbol,
  t.funding_quote_symbol,
  t.funding_rate_symbol,
  t.index_symbol,
  t.settlement_symbol,
  t.funding_rate_granularity,
  t.source_exchanges,
  t.risk_k,
  t.risk_m,
  t.risk_f,
  t.mmr_limit,
  t.mmr_lev_constant,
  t.market_stage,
  t.pre_market_to_perp_date,
  t.display_symbol
FROM tokens AS t CROSS JOIN registry_state AS s WHERE s.id = 1
"""


def upgrade() -> None:
    """Create the 0.1.0 registry."""
    op.create_table(
        "tokens",
        sa.Column("symbol", sa.Text(), primary_key=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("contract_status", sa.Text(), nullable=False),
        sa.Column("is_new", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("listed_at", sa.BigInteger()),
        sa.Column("first_seen", sa.BigInteger(), nullable=False),
        sa.Column("last_seen", sa.BigInteger(), nullable=False),
        sa.Column("delisted_at", sa.BigInteger()),
        sa.Column("missing_since", sa.BigInteger()),
        sa.Column("root_symbol", sa.Text()),
        sa.Column("contract_type", sa.Text()),
        sa.Column("first_open_date", sa.BigInteger()),
        sa.Column("expire_date", sa.BigInteger()),
        sa.Column("settle_date", sa.BigInteger()),
        sa.Column("base_currency", sa.Text()),
        sa.Column("quote_currency", sa.Text()),
        sa.Column("settle_currency", sa.Text()),
        sa.Column("max_order_qty", sa.Float()),
        sa.Column("max_price", sa.Float()),
        sa.Column("lot_size", sa.Float()),
        sa.Column("tick_size", sa.Float()),
        sa.Column("index_price_tick_size", sa.Float()),
        sa.Column("multiplier", sa.Float()),
        sa.Column("initial_margin", sa.Float()),
        sa.Column("maintain_margin", sa.Float()),
        sa.Column("max_risk_limit", sa.Float()),
        sa.Column("min_risk_limit", sa.Float()),
        sa.Column("risk_step", sa.Float()),
        sa.Column("maker_fee_rate", sa.Float()),
        sa.Column("taker_fee_rate", sa.Float()),
        sa.Column("maker_fix_fee", sa.Float()),
        sa.Column("taker_fix_fee", sa.Float()),
        sa.Column("settlement_fee", sa.Float()),
        sa.Column("max_leverage", sa.Float()),
        sa.Column("is_deleverage", sa.Boolean()),
        sa.Column("is_quanto", sa.Boolean()),
        sa.Column("is_inverse", sa.Boolean()),
        sa.Column("support_cross", sa.Boolean()),
        sa.Column("mark_method", sa.Text()),
        sa.Column("fair_method", sa.Text()),
        sa.Column("funding_base_symbol", sa.Text()),
        sa.Column("funding_quote_symbol", sa.Text()),
        sa.Column("funding_rate_symbol", sa.Text()),
        sa.Column("index_symbol", sa.Text()),
        sa.Column("settlement_symbol", sa.Text()),
        sa.Column("funding_rate_granularity", sa.BigInteger()),
        sa.Column("source_exchanges", sa.Text()),
        sa.Column("risk_k", sa.Float()),
        sa.Column("risk_m", sa.Float()),
        sa.Column("risk_f", sa.Float()),
        sa.Column("mmr_limit", sa.Float()),
        sa.Column("mmr_lev_constant", sa.Float()),
        sa.Column("market_stage", sa.Text()),
        sa.Column("pre_market_to_perp_date", sa.BigInteger()),
        sa.Column("display_symbol", sa.Text()),
    )
    op.create_index("ix_tokens_active", "tokens", ["symbol"],
                    sqlite_where=sa.text("status = 'active'"),
                    postgresql_where=sa.text("status = 'active'"))
    op.create_index("ix_tokens_base_currency", "tokens", ["base_currency"])
    op.create_index("ix_tokens_new", "tokens", [sa.text("first_seen DESC")],
                    sqlite_where=sa.text("is_new = 1"),
                    postgresql_where=sa.text("is_new"))
    op.create_index("ix_tokens_status_last_seen", "tokens", ["status", sa.text("last_seen DESC")])
    op.create_table(
        "token_history",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("event_time", sa.BigInteger(), nullable=False),
        sa.Column("sync_id", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.UniqueConstraint("symbol", "event_type", "sync_id", name="uq_token_history_event"),
    )
    op.create_index("ix_token_history_symbol_time", "token_history", ["symbol", sa.text("event_time DESC")])
    op.create_index("ix_token_history_time", "token_history", [sa.text("event_time DESC")])
    op.create_table(
        "sync_runs",
        sa.Column("sync_id", sa.Text(), primary_key=True),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("revision", sa.Integer()),
        sa.Column("fetched", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("active", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("listed", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("delisted", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("relisted", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("delisting_scheduled", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("status_changed", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("params_changed", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("unchanged", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("invalid", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("api_ms", sa.Float()),
        sa.Column("db_load_ms", sa.Float()),
        sa.Column("process_ms", sa.Float()),
        sa.Column("batch_write_ms", sa.Float()),
        sa.Column("cache_ms", sa.Float()),
        sa.Column("total_ms", sa.Float()),
    )
    op.create_index("ix_sync_runs_finished", "sync_runs", [sa.text("finished_at DESC")])
    op.create_table(
        "registry_state",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("last_sync_id", sa.Text()),
        sa.Column("last_fetched_at", sa.BigInteger()),
        sa.Column("last_event_id", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.execute(TOKENS_LIVE)
    op.execute("INSERT INTO registry_state (id, revision) VALUES (1, 0)")


def downgrade() -> None:
    """Downgrades are not supported: restore a backup taken before the upgrade."""
    raise NotImplementedError("tokenwatch does not downgrade a registry: restore a backup taken before the upgrade")
