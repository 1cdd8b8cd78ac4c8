"""Task registry: the vocabulary of a task (:class:`TaskInfo`), where tasks come from, lookups.

``lepton_fl`` defines no task itself. Tasks come from two sources:

- Python entry points in the group ``lepton_fl.tasks`` (:data:`ENTRY_POINT_GROUP`): each names a
  :class:`TaskInfo`, a sequence of them, or a callable returning either. The demo tasks come this
  way from ``lepton_demo.tasks``; a site's package declares its own in its ``pyproject.toml``::

      [project.entry-points."lepton_fl.tasks"]
      my_site = "my_site.tasks:tasks"

- :func:`register_task`, for code that registers a task at run time.

Entry points are read lazily, on the first lookup, and cached. A task name given by two sources
is an error that names both.
"""

from __future__ import annotations

import importlib.metadata
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from lepton_fl.datasets.examples import ImageSpec, LocalSplit, Modality, TextSpec
from lepton_fl.datasets.tabular import DatasetError, TabularSchema, TabularSplit

__all__ = [
    "ENTRY_POINT_GROUP",
    "TASKS",
    "TaskInfo",
    "get_task",
    "list_partitions",
    "list_tasks",
    "load_local",
    "load_partition",
    "register_task",
    "task_source",
    "unregister_task",
]

ENTRY_POINT_GROUP = "lepton_fl.tasks"
"""The entry-point group a package declares its tasks in."""

_HOW_TO_REGISTER = (
    "register a task with lepton_fl.datasets.register_task(TaskInfo(...)) or declare it in an "
    f"entry point of the group {ENTRY_POINT_GROUP!r}"
)


@dataclass(frozen=True)
class TaskInfo:
    """One registered task: its schema, its named partitions and its loader."""

    name: str
    description: str
    schema: TabularSchema | None  # tabular tasks: the agreed encoding
    partitions: tuple[str, ...]
    # (partition, *, seed, test_fraction) -> TabularSplit (tabular) or LocalSplit
    loader: Callable[..., TabularSplit | LocalSplit]
    num_classes: int = 2
    modality: Modality = "tabular"
    labels: tuple[str, ...] = ()  # class names, index = label; empty: "0", "1", ...
    image: ImageSpec | None = None  # image tasks: how every site prepares its images
    text: TextSpec | None = None  # text tasks: how every site tokenises its texts


class _Registry:
    """The known tasks: entry-point tasks (read once, on first use) and run-time registrations."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._discovered: dict[str, TaskInfo] | None = None  # None: entry points not read yet
        self._discovering = False
        self._runtime: dict[str, TaskInfo] = {}
        self._sources: dict[str, str] = {}  # task name -> where it came from
        self._pending: dict[str, str] = {}  # the same, for entry-point tasks being read

    def tasks(self) -> dict[str, TaskInfo]:
        """Every known task, entry-point tasks first (in entry-point order), then run-time ones."""
        with self._lock:
            self._discover()
            return {**(self._discovered or {}), **self._runtime}

    def source(self, name: str) -> str | None:
        with self._lock:
            self._discover()
            return self._sources.get(name)

    def register(self, info: TaskInfo, source: str) -> None:
        if not isinstance(info, TaskInfo):
            raise DatasetError(
                f"{source}: a task must be a TaskInfo, got {type(info).__name__}",
                code="bad_argument",
            )
        with self._lock:
            self._discover()  # a clash with an entry-point task shows here, not at a later lookup
            self._check_free(info.name, source)
            self._runtime[info.name] = info
            self._sources[info.name] = source

    def unregister(self, name: str) -> None:
        with self._lock:
            if name not in self._runtime:
                raise DatasetError(
                    f"task {name!r} was not registered at run time; entry-point tasks stay",
                    code="unknown_task",
                )
            del self._runtime[name]
            del self._sources[name]

    def _check_free(self, name: str, source: str) -> None:
        known = self._sources.get(name, self._pending.get(name))
        if known is not None:
            raise DatasetError(
                f"task {name!r} is registered twice: by {known} and by {source}; "
                "task names must be unique",
                code="duplicate_task",
            )

    def _discover(self) -> None:
        if self._discovered is not None or self._discovering:
            return  # read already, or being read (an entry point that calls register_task)
        self._discovering = True
        try:
            found: dict[str, TaskInfo] = {}
            for entry_point in _entry_points():
                source = _describe(entry_point)
                for info in _tasks_of(entry_point, source):
                    self._check_free(info.name, source)
                    found[info.name] = info
                    self._pending[info.name] = source
            self._discovered = found
            self._sources.update(self._pending)
        finally:
            self._pending.clear()
            self._discovering = False


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """The ``lepton_fl.tasks`` entry points of every installed distribution, in a fixed order."""
    selected = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return sorted(selected, key=lambda ep: (ep.name, ep.value))


def _describe(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    owner = f" of distribution {dist.name!r}" if dist is not None else ""
    return f"entry point {entry_point.name!r} ({entry_point.value}){owner}"


def _tasks_of(entry_point: importlib.metadata.EntryPoint, source: str) -> list[TaskInfo]:
    """The tasks an entry point gives: a TaskInfo, a sequence of them, or a callable of either."""
    try:
        given: object = entry_point.load()
        if callable(given) and not isinstance(given, TaskInfo):
            given = given()
    except Exception as exc:
        raise DatasetError(
            f"{source} in group {ENTRY_POINT_GROUP!r} failed to load: {exc}", code="bad_task"
        ) from exc
    items: Iterable[object]
    if isinstance(given, TaskInfo):
        items = (given,)
    elif isinstance(given, Iterable) and not isinstance(given, (str, bytes, Mapping)):
        items = given
    else:
        raise DatasetError(
            f"{source} gives {type(given).__name__}; it must give a TaskInfo, a sequence of "
            "TaskInfo, or a callable returning either",
            code="bad_task",
        )
    tasks: list[TaskInfo] = []
    for item in items:
        if not isinstance(item, TaskInfo):
            raise DatasetError(
                f"{source} gives a {type(item).__name__} among its tasks; each must be a TaskInfo",
                code="bad_task",
            )
        tasks.append(item)
    return tasks


_REGISTRY = _Registry()


class _TaskView(Mapping[str, TaskInfo]):
    """Read-only view of the registered tasks (reads the entry points on first use)."""

    def __getitem__(self, name: str) -> TaskInfo:
        return _REGISTRY.tasks()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(_REGISTRY.tasks())

    def __len__(self) -> int:
        return len(_REGISTRY.tasks())

    def __repr__(self) -> str:
        return f"TASKS({list(self)})"


TASKS: Mapping[str, TaskInfo] = _TaskView()
"""Every registered task by name, read-only; add one with :func:`register_task`."""


def register_task(info: TaskInfo, *, source: str | None = None) -> None:
    """Register ``info`` at run time, so every lookup (``get_task``, ``load_local``) finds it.

    ``source`` names the registrant in errors (default: the calling module). A name that an
    entry point or an earlier registration already gives is refused (``duplicate_task``), naming
    both sources.
    """
    if source is None:
        caller = sys._getframe(1).f_globals.get("__name__", "?")
        source = f"register_task() in module {caller!r}"
    _REGISTRY.register(info, source)


def unregister_task(name: str) -> None:
    """Remove a task registered with :func:`register_task` (entry-point tasks stay)."""
    _REGISTRY.unregister(name)


def task_source(name: str) -> str:
    """Where the registered task ``name`` comes from (an entry point or a ``register_task``)."""
    get_task(name)  # unknown_task, with the usual message
    return _REGISTRY.source(name) or "unknown"


def list_tasks() -> tuple[str, ...]:
    """Names of the registered tasks."""
    return tuple(_REGISTRY.tasks())


def get_task(task: str) -> TaskInfo:
    """The registered task ``task``; :class:`DatasetError` (``unknown_task``) otherwise."""
    tasks = _REGISTRY.tasks()
    info = tasks.get(task)
    if info is None:
        raise DatasetError(
            f"unknown dataset task {task!r}; choose one of {list(tasks)} "
            f"(to add one, {_HOW_TO_REGISTER})",
            code="unknown_task",
        )
    return info


def list_partitions(task: str) -> tuple[str, ...]:
    """The named partitions of ``task`` (heart_disease: the 4 hospitals)."""
    return get_task(task).partitions


def load_partition(
    task: str, partition: str, *, seed: int = 0, test_fraction: float = 0.25
) -> TabularSplit:
    """Load one partition of ``task`` as a seeded, stratified train/test :class:`TabularSplit`.

    ``heart_disease``: ``partition`` is a hospital (only its rows are read into the split).
    ``breast_cancer``: ``partition`` is ``"site-<i>-of-<n>"``, a stratified 1/n share.
    ``credit_scoring``: ``partition`` is a bank (``bank-0`` .. ``bank-2``).
    """
    loaded = _load(task, partition, seed=seed, test_fraction=test_fraction)
    if not isinstance(loaded, TabularSplit):
        raise DatasetError(
            f"task {task!r} is not tabular; load it with load_local", code="bad_argument"
        )
    return loaded


def load_local(
    task: str, partition: str, *, seed: int = 0, test_fraction: float = 0.25
) -> LocalSplit:
    """Load one partition of any task (tabular, image or text) as a :class:`LocalSplit`."""
    loaded = _load(task, partition, seed=seed, test_fraction=test_fraction)
    return loaded.local() if isinstance(loaded, TabularSplit) else loaded


def _load(
    task: str, partition: str, *, seed: int, test_fraction: float
) -> TabularSplit | LocalSplit:
    info = get_task(task)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DatasetError(f"seed must be an int, got {seed!r}", code="bad_argument")
    return info.loader(partition, seed=seed, test_fraction=test_fraction)
