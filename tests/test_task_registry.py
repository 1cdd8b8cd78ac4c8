"""The task registry: demo tasks through the ``lepton_fl.tasks`` entry point, a site's own task
registered at run time, duplicate names refused, and lepton_fl importing no task package."""

from __future__ import annotations

import ast
import csv
import importlib
import importlib.metadata
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lepton_fl.datasets import (
    ENTRY_POINT_GROUP,
    TASKS,
    DatasetError,
    TabularSchema,
    TabularSplit,
    TaskInfo,
    get_task,
    list_partitions,
    list_tasks,
    load_local,
    load_partition,
    register_task,
    task_source,
    unregister_task,
)
from lepton_fl.datasets import registry as task_registry
from lepton_fl.datasets.tabular import CategoricalFeature, NumericFeature, make_split

ROOT = Path(__file__).resolve().parents[1]
DEMO_TASKS = (
    "heart_disease",
    "breast_cancer",
    "credit_scoring",
    "drug_reviews",
    "drug_reviews_tiny",
    "solar_defects",
)


# --- a site's own task, as a site would write it: its schema, its CSV, its loader -----------

SITE_SCHEMA = TabularSchema(
    task="clinic_readmission",
    features=(
        NumericFeature("age", low=0.0, high=100.0, fill=50.0),
        CategoricalFeature("ward", categories=("a", "b")),
    ),
)


def _site_task(folder: Path) -> TaskInfo:
    def load(partition: str, *, seed: int, test_fraction: float) -> TabularSplit:
        path = folder / f"{partition}.csv"
        if not path.exists():
            raise DatasetError(f"no partition {partition!r}", code="unknown_partition")
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        columns = {
            "age": np.array([float(r["age"]) for r in rows]),
            "ward": [r["ward"] for r in rows],
        }
        return make_split(
            name=partition,
            x=SITE_SCHEMA.encode(columns, source=str(path)),
            y=np.array([int(r["readmitted"]) for r in rows], dtype=np.int64),
            feature_names=SITE_SCHEMA.feature_names,
            num_classes=2,
            seed=seed,
            test_fraction=test_fraction,
        )

    return TaskInfo(
        name="clinic_readmission",
        description="a site's own task, registered at run time",
        schema=SITE_SCHEMA,
        partitions=("north",),
        loader=load,
    )


@pytest.fixture
def site_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    with (tmp_path / "north.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["age", "ward", "readmitted"])
        for i in range(40):
            writer.writerow([int(rng.integers(20, 90)), "ab"[i % 2], i % 2])
    return tmp_path


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty registry that reads the entry points again (the global one is left alone)."""
    monkeypatch.setattr(task_registry, "_REGISTRY", task_registry._Registry())


def _installed_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """Install a distribution ``site_tasks`` on sys.path with a ``lepton_fl.tasks`` entry point."""
    site = tmp_path / "site-packages"
    (site / "site_tasks_dist-1.0.dist-info").mkdir(parents=True)
    (site / "site_tasks_dist-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: site-tasks-dist\nVersion: 1.0\n", encoding="utf-8"
    )
    (site / "site_tasks_dist-1.0.dist-info" / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nsite = site_tasks:tasks\n", encoding="utf-8"
    )
    (site / "site_tasks.py").write_text(body, encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "site_tasks", raising=False)
    importlib.invalidate_caches()


# --- the demo tasks arrive through the entry point --------------------------------------------


def test_demo_tasks_come_through_the_entry_point() -> None:
    (demo,) = [
        ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == "demo"
    ]
    assert demo.value == "lepton_demo.tasks:demo_tasks"
    assert tuple(info.name for info in demo.load()()) == DEMO_TASKS
    assert list_tasks()[: len(DEMO_TASKS)] == DEMO_TASKS
    for name in DEMO_TASKS:
        assert "entry point 'demo' (lepton_demo.tasks:demo_tasks)" in task_source(name)
        assert TASKS[name] is get_task(name)


def test_discovery_is_lazy_and_lepton_fl_imports_no_demo_module() -> None:
    code = (
        "import sys\n"
        "import lepton_fl.datasets, lepton_fl.model_init, lepton_fl.models\n"
        "assert not [m for m in sys.modules if m.startswith('lepton_demo')], 'eager'\n"
        "from lepton_fl.datasets import get_task\n"
        "get_task('breast_cancer')\n"
        "assert 'lepton_demo.tasks' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_discovery_runs_once(monkeypatch: pytest.MonkeyPatch, fresh_registry: None) -> None:
    calls: list[int] = []
    real = task_registry._entry_points

    def counted() -> list[importlib.metadata.EntryPoint]:
        calls.append(1)
        return real()

    monkeypatch.setattr(task_registry, "_entry_points", counted)
    assert calls == []
    get_task("heart_disease")
    list_tasks()
    assert "breast_cancer" in TASKS
    assert calls == [1]


def test_unknown_task_lists_the_known_ones_and_says_how_to_register() -> None:
    with pytest.raises(DatasetError, match="unknown dataset task 'nope'") as caught:
        get_task("nope")
    assert caught.value.code == "unknown_task"
    message = str(caught.value)
    assert all(name in message for name in DEMO_TASKS)
    assert "register_task" in message
    assert ENTRY_POINT_GROUP in message


# --- a site's own task, registered at run time ---------------------------------------------------


def test_a_site_registers_its_own_task_and_loads_a_partition(
    site_csv: Path, request: pytest.FixtureRequest
) -> None:
    info = _site_task(site_csv)
    register_task(info)
    request.addfinalizer(lambda: unregister_task(info.name))

    assert get_task("clinic_readmission") is info
    assert list_tasks()[: len(DEMO_TASKS)] == DEMO_TASKS, "the demo tasks are still there"
    assert list_tasks()[-1] == "clinic_readmission"
    assert list_partitions("clinic_readmission") == ("north",)
    assert "register_task() in module" in task_source("clinic_readmission")

    split = load_partition("clinic_readmission", "north", seed=5)
    again = load_partition("clinic_readmission", "north", seed=5)
    assert split.feature_names == ("age", "ward=a", "ward=b")
    assert len(split.y_train) + len(split.y_test) == 40
    assert np.array_equal(split.x_train, again.x_train)
    local = load_local("clinic_readmission", "north", seed=5)
    assert local.modality == "tabular"
    assert local.input_shape == (3,)

    unregister_task("clinic_readmission")
    with pytest.raises(DatasetError) as gone:
        get_task("clinic_readmission")
    assert gone.value.code == "unknown_task"
    register_task(info)  # free again once unregistered


def test_a_run_time_task_clashing_with_a_demo_task_names_both(site_csv: Path) -> None:
    clash = TaskInfo(
        name="heart_disease",
        description="a site's own heart data under the demo's name",
        schema=SITE_SCHEMA,
        partitions=("north",),
        loader=_site_task(site_csv).loader,
    )
    with pytest.raises(DatasetError, match="registered twice") as caught:
        register_task(clash, source="the north clinic's plugin")
    assert caught.value.code == "duplicate_task"
    message = str(caught.value)
    assert "entry point 'demo' (lepton_demo.tasks:demo_tasks)" in message
    assert "the north clinic's plugin" in message
    assert get_task("heart_disease").description.startswith("UCI heart disease")


def test_two_run_time_registrations_of_one_name_are_refused(
    site_csv: Path, fresh_registry: None
) -> None:
    info = _site_task(site_csv)
    register_task(info, source="plugin A")
    with pytest.raises(DatasetError, match="by plugin A and by plugin B") as caught:
        register_task(info, source="plugin B")
    assert caught.value.code == "duplicate_task"


def test_only_task_infos_can_be_registered(fresh_registry: None) -> None:
    with pytest.raises(DatasetError, match="must be a TaskInfo") as caught:
        register_task({"name": "x"})  # type: ignore[arg-type]
    assert caught.value.code == "bad_argument"
    with pytest.raises(DatasetError, match="not registered at run time"):
        unregister_task("heart_disease")


# --- a site's own package with its own entry point ------------------------------------------------


_SITE_TASKS = """
from lepton_fl.datasets import TaskInfo

def _load(partition, *, seed, test_fraction):
    raise AssertionError("not loaded here")

def tasks():
    return [TaskInfo(name={name!r}, description="site", schema=None, partitions=("p",),
                     loader=_load)]
"""


def test_a_site_package_entry_point_adds_its_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None
) -> None:
    _installed_tasks(tmp_path, monkeypatch, _SITE_TASKS.format(name="site_only"))

    assert list_tasks()[: len(DEMO_TASKS)] == DEMO_TASKS
    assert "site_only" in list_tasks()
    assert "distribution 'site-tasks-dist'" in task_source("site_only")


def test_two_entry_points_giving_one_name_name_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None
) -> None:
    _installed_tasks(tmp_path, monkeypatch, _SITE_TASKS.format(name="breast_cancer"))

    with pytest.raises(DatasetError, match="'breast_cancer' is registered twice") as caught:
        get_task("breast_cancer")
    assert caught.value.code == "duplicate_task"
    message = str(caught.value)
    assert "entry point 'demo' (lepton_demo.tasks:demo_tasks)" in message
    assert "entry point 'site' (site_tasks:tasks) of distribution 'site-tasks-dist'" in message


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("raise ImportError('no such thing')", "failed to load: no such thing"),
        ("tasks = 42", "gives int"),
        ("tasks = ['heart']", "gives a str among its tasks"),
    ],
)
def test_a_broken_entry_point_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None, body: str, match: str
) -> None:
    _installed_tasks(tmp_path, monkeypatch, body)

    with pytest.raises(DatasetError, match=match) as caught:
        list_tasks()
    assert caught.value.code == "bad_task"
    assert "entry point 'site'" in str(caught.value)


# --- imports: lepton_fl is the shared library, lepton_demo sits on top of it ----------------


def _imported_modules(package: str) -> Iterator[tuple[Path, str]]:
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield path, alias.name
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                yield path, node.module


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("lepton_fl", ("lepton_demo", "lepton", "coordinator", "client_node")),
        ("lepton_demo", ("lepton", "coordinator", "client_node")),
    ],
)
def test_package_imports_stay_inside_their_layer(package: str, forbidden: tuple[str, ...]) -> None:
    bad: list[Any] = [
        (str(path.relative_to(ROOT)), module)
        for path, module in _imported_modules(package)
        if module.split(".")[0] in forbidden
    ]
    assert bad == []
