"""Writing a signed privacy report to files: the JSON, its detached signature and the page.

``privacy-report.json`` is the report exactly as signed (pretty-printed: the signature
covers its canonical JSON, not its layout), ``privacy-report.json.sig`` the coordinator's
detached signature, ``privacy-report.html`` the page with both embedded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton.audit_html import embedded_report, render
from lepton.audit_verify import ReportFileError, load_report, signature_path

REPORT_FILE = "privacy-report.json"
PAGE_FILE = "privacy-report.html"


@dataclass(frozen=True)
class ReportFiles:
    """Where a report was written."""

    json: Path
    html: Path
    signature: Path

    def as_dict(self) -> dict[str, str]:
        return {"json": str(self.json), "html": str(self.html), "signature": str(self.signature)}


def write_report_files(signed: Mapping[str, Any], directory: Path) -> ReportFiles:
    """Write ``{"report", "signature"}`` as three files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    report, signature = signed["report"], signed["signature"]
    files = ReportFiles(
        json=directory / REPORT_FILE,
        html=directory / PAGE_FILE,
        signature=signature_path(directory / REPORT_FILE),
    )
    files.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    files.signature.write_text(json.dumps(signature, indent=2) + "\n", encoding="utf-8")
    files.html.write_text(render(report, signature), encoding="utf-8")
    return files


def read_signed_report(path: Path, signature: Path | None = None) -> tuple[dict[str, Any], Any]:
    """The report and signature from a JSON file (with its ``.sig``) or a report page."""
    if path.suffix.lower() in (".html", ".htm"):
        try:
            embedded = embedded_report(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ReportFileError(f"{path} is not a readable report page ({err})") from err
        if embedded is None or not isinstance(embedded.get("report"), dict):
            raise ReportFileError(f"{path} embeds no privacy report")
        return embedded["report"], embedded.get("signature")
    return load_report(path, signature)
