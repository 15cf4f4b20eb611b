"""Tasks: the :class:`Task` interface and the registry that maps a task's name to its implementation.

``get_task("sudoku")`` returns the Sudoku task, ``get_task("maze")`` the 30 x 30 Maze-Unique task (``"maze11"``,
``"maze15"``: smaller boards for CPU training); a new task subclasses :class:`Task` and is added with
:func:`register` (tests do this with tiny tasks of their own). Only task modules know what a cell means.
"""

from __future__ import annotations

from attractorlab.tasks.base import PuzzleSet, Task, TaskError

_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add ``task`` under ``task.name`` (replacing one of the same name) and return it."""
    if not task.name:
        raise TaskError("a task needs a name to be registered")
    _REGISTRY[task.name] = task
    return task


def _builtin() -> None:
    if "sudoku" not in _REGISTRY:
        from attractorlab.tasks import maze, sudoku

        register(sudoku.TASK)
        for task in maze.builtin_tasks():
            register(task)


def get_task(name: str | Task) -> Task:
    """The registered task called ``name`` (a :class:`Task` passes through)."""
    if isinstance(name, Task):
        return name
    _builtin()
    if name not in _REGISTRY:
        raise TaskError(f"unknown task {name!r}; choose one of {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    """Names of the registered tasks."""
    _builtin()
    return sorted(_REGISTRY)


__all__ = ["PuzzleSet", "Task", "TaskError", "get_task", "names", "register"]
