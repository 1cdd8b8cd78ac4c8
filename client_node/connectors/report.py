"""What ``lepton node check-data`` tells a site beyond "the data can be used": its warnings.

A warning never stops the node: the data is used exactly as the trainer uses it. It says what
the federation will not get from this site, or what the task's encoding changed:

* a class of the task has no example in the data: the federation's model cannot learn that class
  from this site;
* a declared numeric column holds values outside the task's agreed range ``[low, high]``: the
  encoding clips them to the range (as it always has); the report counts them per column.

These are facts about the site's data. ``lepton node check-data`` prints them on the site's own
machine; they are never put in anything the node sends to the coordinator (a refusal carries only
a reason code and a column, see ``client_node.runner.data_refusal``).
"""

from __future__ import annotations

from dataclasses import dataclass

from lepton_fl.datasets.examples import LocalSplit

__all__ = ["ClippedColumn", "DataReport"]


@dataclass(frozen=True)
class ClippedColumn:
    """A declared numeric column with values outside the task's range, clipped to it."""

    column: str  # the column as the site's file names it
    feature: str  # the task's feature it is encoded as ([data.rename])
    low: float
    high: float
    below: int  # values < low, encoded as low
    above: int  # values > high, encoded as high

    @property
    def count(self) -> int:
        """How many values were clipped."""
        return self.below + self.above

    def describe(self) -> str:
        """One line for a person, e.g. ``age: 2 values outside [20, 80] were clipped ...``."""
        renamed = f" (the task's {self.feature!r})" if self.feature != self.column else ""
        values = "value" if self.count == 1 else "values"
        were = "was" if self.count == 1 else "were"
        sides = ", ".join(
            f"{n} {side}" for n, side in ((self.below, "below"), (self.above, "above")) if n
        )
        return (
            f"{self.column}{renamed}: {self.count} {values} outside [{self.low:g}, "
            f"{self.high:g}] {were} clipped to the range ({sides}); check the column's unit "
            "and those rows"
        )


@dataclass(frozen=True)
class DataReport:
    """The checked split of a node's data and the warnings about it (see the module's text)."""

    split: LocalSplit
    labels: tuple[str, ...]  # the task's label names, index = label
    clipped: tuple[ClippedColumn, ...] = ()

    @property
    def absent_labels(self) -> tuple[str, ...]:
        """The task's labels without a single example in the data."""
        present = {int(v) for v in self.split.train.labels} | {
            int(v) for v in self.split.test.labels
        }
        return tuple(name for k, name in enumerate(self.labels) if k not in present)

    def warnings(self) -> tuple[str, ...]:
        """One sentence per warning; empty when the data has nothing to warn about."""
        out: list[str] = []
        absent = self.absent_labels
        if absent:
            present = len(self.labels) - len(absent)
            kind = "class" if len(absent) == 1 else "classes"
            these = f"{kind} {', '.join(repr(name) for name in absent)}"
            out.append(
                f"only {present} of the task's {len(self.labels)} classes "
                f"{'is' if present == 1 else 'are'} in this data (no example of {these}): the "
                f"federation's model cannot learn {these} from this site. The node will still "
                "train on this data."
            )
        for column in self.clipped:
            out.append(f"column {column.describe()}.")
        return tuple(out)
