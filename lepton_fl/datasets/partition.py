"""Split a local table or array into sites with the ``flwr-datasets`` partitioners, offline.

The sector demos simulate several institutions from one public data set. The split is made
with Flower's own partitioners (:class:`flwr_datasets.partitioner.DirichletPartitioner` for a
label-skewed split, :class:`~flwr_datasets.partitioner.NaturalIdPartitioner` for a natural one)
applied to a ``datasets.Dataset`` built in memory from the row labels (or site ids) and the row
numbers: nothing is downloaded, nothing is written to disk, and the result is plain row indices
into the caller's arrays.

Guarantees of :func:`dirichlet_partition`: the same ``(labels, num_partitions, alpha, seed,
min_partition_size, min_class_size)`` give the same partitions; the partitions are disjoint,
cover every row and are each sorted; every partition has at least ``min_partition_size`` rows
and at least ``min(2, number of classes)`` classes with ``min_class_size`` rows or more each (so
that a site's stratified train/test split has two classes on each side). A draw that misses
these (a small ``alpha`` concentrates a class on a few sites) is redrawn with the next seed of a
fixed sequence derived from ``seed``; if none of ``max_draws`` draws qualifies,
:class:`DatasetError` (``bad_argument``) says so and what to change (a larger ``alpha``, fewer
partitions, or a smaller minimum size).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from lepton_fl.datasets.tabular import DatasetError

__all__ = ["dirichlet_partition", "natural_partition"]

_LABEL = "label"
_ROW = "row"
_SITE = "site"


def _flwr_partitioners() -> tuple[Any, Any]:
    try:
        import datasets
        from flwr_datasets import partitioner
    except ImportError as exc:  # pragma: no cover - installed by `make setup`
        raise DatasetError(
            "partitioning needs the packages 'flwr-datasets' and 'datasets' (the demo's "
            "sectors extra): pip install 'lepton-fl[sectors]' or 'flwr-datasets>=0.6,<0.7'",
            code="missing_dependency",
        ) from exc
    return datasets, partitioner


def _draw_seed(seed: int, draw: int) -> int:
    """The seed of draw ``draw`` (0: ``seed`` itself; later draws: a fixed derived sequence)."""
    if draw == 0:
        return seed
    return int(np.random.SeedSequence([seed, draw]).generate_state(1)[0])


def _classes_with(y: npt.NDArray[np.integer], min_count: int) -> int:
    """How many classes have at least ``min_count`` rows in ``y``."""
    _, counts = np.unique(y, return_counts=True)
    return int((counts >= min_count).sum())


def dirichlet_partition(
    labels: Sequence[int] | npt.NDArray[np.integer],
    *,
    num_partitions: int,
    alpha: float,
    seed: int,
    min_partition_size: int = 10,
    min_class_size: int = 5,
    max_draws: int = 50,
) -> list[npt.NDArray[np.int64]]:
    """Label-skewed partition of rows ``0..n-1`` into ``num_partitions`` sites (Dirichlet).

    For every class, the share of its rows that each site receives is drawn from
    ``Dirichlet(alpha, ..., alpha)`` (Flower's ``DirichletPartitioner``, no self-balancing): a
    small ``alpha`` gives very different class mixes per site, a large one nearly the same mix.
    Returns one sorted ``int64`` index array per site. See the module docstring for the
    guarantees and for what happens when they cannot be met.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) == 0:
        raise DatasetError(
            f"labels must be a non-empty one-dimensional array, got shape {y.shape}",
            code="bad_argument",
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError("labels must be integer class indices", code="bad_argument")
    if not isinstance(num_partitions, int) or not 1 <= num_partitions <= len(y):
        raise DatasetError(
            f"num_partitions must be an int in [1, {len(y)}] (the number of rows), "
            f"got {num_partitions!r}",
            code="bad_argument",
        )
    if not (isinstance(alpha, int | float) and alpha > 0):
        raise DatasetError(f"alpha must be a positive number, got {alpha!r}", code="bad_argument")
    if min_partition_size * num_partitions > len(y):
        raise DatasetError(
            f"{len(y)} rows cannot give {num_partitions} partitions of at least "
            f"{min_partition_size} rows; lower min_partition_size or num_partitions",
            code="bad_argument",
        )
    datasets, partitioner = _flwr_partitioners()
    table = datasets.Dataset.from_dict(
        {_LABEL: y.astype(np.int64), _ROW: np.arange(len(y), dtype=np.int64)}
    )
    min_classes = min(2, _classes_with(y, min_class_size))
    for draw in range(max_draws):
        split = partitioner.DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by=_LABEL,
            alpha=float(alpha),
            min_partition_size=min_partition_size,
            self_balancing=False,
            shuffle=False,
            seed=_draw_seed(seed, draw),
        )
        split.dataset = table
        try:
            with warnings.catch_warnings():
                # it warns on each internal redraw for min_partition_size; we redraw ourselves
                warnings.simplefilter("ignore", UserWarning)
                parts = [
                    np.sort(np.asarray(split.load_partition(k)[_ROW], dtype=np.int64))
                    for k in range(num_partitions)
                ]
        except ValueError:  # its own 10 redraws missed min_partition_size
            continue
        if all(_classes_with(y[p], min_class_size) >= min_classes for p in parts):
            return parts
    raise DatasetError(
        f"no Dirichlet split (alpha={alpha}) of {len(y)} rows into {num_partitions} partitions "
        f"gave every partition >= {min_partition_size} rows and >= {min_classes} classes of "
        f">= {min_class_size} rows in {max_draws} seeded draws; use a larger alpha, fewer "
        "partitions, or a smaller min_partition_size or min_class_size",
        code="bad_argument",
    )


def natural_partition(
    site_ids: Sequence[str] | npt.NDArray[np.str_],
) -> Mapping[str, npt.NDArray[np.int64]]:
    """The natural split: rows grouped by their site id (Flower's ``NaturalIdPartitioner``).

    Returns ``{site id: sorted int64 row indices}`` in sorted order of the site ids.
    """
    ids = [str(s) for s in site_ids]
    if not ids:
        raise DatasetError("site_ids must not be empty", code="bad_argument")
    datasets, partitioner = _flwr_partitioners()
    table = datasets.Dataset.from_dict({_SITE: ids, _ROW: np.arange(len(ids), dtype=np.int64)})
    split = partitioner.NaturalIdPartitioner(partition_by=_SITE)
    split.dataset = table
    out: dict[str, npt.NDArray[np.int64]] = {}
    # flwr-datasets draws a tqdm progress bar on stderr while it groups the rows
    with contextlib.redirect_stderr(io.StringIO()):
        for k in range(split.num_partitions):
            rows = split.load_partition(k)[_ROW]
            out[str(split.partition_id_to_natural_id[k])] = np.sort(
                np.asarray(rows, dtype=np.int64)
            )
    return dict(sorted(out.items()))
