"""Tenants: datasets, models and jobs belong to a tenant (NULL: shared with every tenant);
API keys carry a tenant and a role; models register asynchronously (a status and an error);
datasets record their stored size (tenant quotas).

Existing rows: uploaded datasets, API-registered models and their jobs go to the tenant
``default``; the built-in zoo and imported benchmark tables stay shared; existing keys become
``default`` admins (they could do everything before).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TENANT = sa.String(64)
#: names SQLite gives the unnamed UNIQUE constraints of 0001 inside a batch
NAMING = {"uq": "%(table_name)s_%(column_0_name)s_key"}


def upgrade() -> None:
    with op.batch_alter_table("datasets", naming_convention=NAMING) as batch:
        batch.add_column(sa.Column("tenant", TENANT, nullable=True))
        batch.add_column(
            sa.Column("size_bytes", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.drop_constraint("datasets_content_hash_key", type_="unique")
        batch.create_unique_constraint("uq_dataset_content", ["tenant", "content_hash"])
        batch.create_index("ix_datasets_tenant", ["tenant"])
    with op.batch_alter_table("models", naming_convention=NAMING) as batch:
        batch.add_column(sa.Column("tenant", TENANT, nullable=True))
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="ready"))
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("created_by", sa.String(32), nullable=True))
        batch.alter_column("modality", existing_type=sa.String(16), nullable=True)
        batch.alter_column("has_head", existing_type=sa.Boolean(), nullable=True)
        batch.alter_column("fingerprint", existing_type=sa.String(64), nullable=True)
        batch.drop_constraint("models_name_key", type_="unique")
        batch.create_unique_constraint("uq_model_name", ["tenant", "name"])
        batch.create_index("ix_models_tenant", ["tenant"])
    with op.batch_alter_table("ranking_jobs") as batch:
        batch.add_column(sa.Column("tenant", TENANT, nullable=True))
        batch.create_index("ix_ranking_jobs_tenant", ["tenant"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("tenant", TENANT, nullable=False, server_default="default"))
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="admin"))
    with op.batch_alter_table("recommender_fits") as batch:
        batch.alter_column("scope", existing_type=sa.String(100), type_=sa.String(200))

    op.execute("UPDATE datasets SET tenant = 'default' WHERE reference = false")
    op.execute("UPDATE models SET tenant = 'default' WHERE builtin = false AND reference = false")
    op.execute(
        "UPDATE ranking_jobs SET tenant = "
        "(SELECT tenant FROM datasets WHERE datasets.id = ranking_jobs.dataset_id)"
    )
    # fits were learned across every dataset; each tenant's scope refits on its own rows
    op.execute("DELETE FROM recommender_fits")


def downgrade() -> None:
    with op.batch_alter_table("recommender_fits") as batch:
        batch.alter_column("scope", existing_type=sa.String(200), type_=sa.String(100))
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("role")
        batch.drop_column("tenant")
    with op.batch_alter_table("ranking_jobs") as batch:
        batch.drop_index("ix_ranking_jobs_tenant")
        batch.drop_column("tenant")
    op.execute("DELETE FROM models WHERE status <> 'ready'")
    with op.batch_alter_table("models", naming_convention=NAMING) as batch:
        batch.drop_index("ix_models_tenant")
        batch.drop_constraint("uq_model_name", type_="unique")
        batch.create_unique_constraint("models_name_key", ["name"])
        batch.alter_column("fingerprint", existing_type=sa.String(64), nullable=False)
        batch.alter_column("has_head", existing_type=sa.Boolean(), nullable=False)
        batch.alter_column("modality", existing_type=sa.String(16), nullable=False)
        batch.drop_column("created_by")
        batch.drop_column("error")
        batch.drop_column("status")
        batch.drop_column("tenant")
    with op.batch_alter_table("datasets", naming_convention=NAMING) as batch:
        batch.drop_index("ix_datasets_tenant")
        batch.drop_constraint("uq_dataset_content", type_="unique")
        batch.create_unique_constraint("datasets_content_hash_key", ["content_hash"])
        batch.drop_column("size_bytes")
        batch.drop_column("tenant")
