"""Owed messages and the claiming process.

- ``owed_messages``: a receipt or a coordinators' notice line that a decision made due, written
  in the decision's transaction and removed once sent (a run killed in between no longer loses
  it). Existing ledgers start with none owed: nothing old is sent after the upgrade.
- ``deliveries.claimed_by``: which process claimed a message (``host:pid:start``), so that a
  claim left in ``sending`` by a process that is gone is recognised at once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('owed_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('submission_id', sa.Integer(), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    with op.batch_alter_table('owed_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_owed_messages_campaign'), ['campaign'], unique=False)

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=128), nullable=True))



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('claimed_by')

    with op.batch_alter_table('owed_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_owed_messages_campaign'))

    op.drop_table('owed_messages')
