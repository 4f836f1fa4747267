"""Every table that holds rows of one workflow is purged with it: a new per-workflow table that
retention forgot would keep the foreign key from ever letting its workflow go (or leak rows)."""

from __future__ import annotations

from conveyor.coordinator.store.retention import PURGED_WITH_WORKFLOW
from conveyor.coordinator.store.schema import metadata, workflows


def test_every_table_with_a_workflow_id_is_purged_with_its_workflow() -> None:
    per_workflow = {
        table.name
        for table in metadata.sorted_tables
        if table is not workflows and "workflow_id" in table.columns
    }

    assert per_workflow == {table.name for table in PURGED_WITH_WORKFLOW}
