"""`localsynth tasks`: the shipped task configs."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from localsynth.tasks import available_tasks, load_task


def tasks() -> None:
    """List the tasks: labels, subjectivity rank and level."""
    table = Table("task", "title", "labels", "subjectivity")
    for name in available_tasks():
        task = load_task(name)
        table.add_row(name, task.title, ", ".join(task.label_names), f"{task.subjectivity.rank} {task.subjectivity.level}")
    Console().print(table)
