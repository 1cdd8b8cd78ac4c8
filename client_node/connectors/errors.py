"""The one error every connector raises: what is wrong, where, and what to do about it.

The message is for the node's operator (the node's log, ``lepton node check-data``): it names
the file, the row and the column, never the value of a cell. The coordinator gets only the code
and the column, in a ``data_invalid`` refusal (``client_node.runner.data_refusal``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ConnectorError"]


class ConnectorError(ValueError):
    """A node's data file cannot be used as it is; the message says where and what to do.

    ``code`` is a stable reason: ``missing_file``, ``unreadable``, ``empty``,
    ``missing_column``, ``wrong_type``, ``missing_value``, ``not_finite``,
    ``unknown_category``, ``unknown_label``, ``bad_image``, ``schema_mismatch``,
    ``too_few_rows``, ``no_tokenizer``, ``bad_tokenizer`` or ``unknown_task``.
    ``path`` is the file (or folder), ``row`` the 1-based row as the message counts it (see the
    message for whether a header line is counted) and ``column`` the column, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        path: Path | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.path = path
        self.row = row
        self.column = column
