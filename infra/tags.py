"""The tags every taggable resource carries: project, stack, role (and a readable Name).

Tests check that no taggable resource lacks them, so cost reports and IAM conditions can
rely on `project`/`stack`/`role` being present everywhere.
"""
from __future__ import annotations

import pulumi

# The tag the backup selection matches; its value is stack-scoped so two stacks in one
# account never back up each other's volumes.
BACKUP_TAG_KEY = "backup"


def backup_tag_value() -> str:
    return f"{pulumi.get_project()}-{pulumi.get_stack()}"


def tags(role: str, name: str, **extra: str) -> dict[str, str]:
    """Tags for one resource: `role` is the machine role it serves (or network/backup/ssh)."""
    project, stack = pulumi.get_project(), pulumi.get_stack()
    return {
        "Name": f"{project}-{stack}-{name}",
        "project": project,
        "stack": stack,
        "role": role,
        **extra,
    }
