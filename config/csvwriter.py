"""The one CSV writer: every CSV that Goldset composes (downloads, reports, files a command writes)
goes through it, so no cell can start a spreadsheet formula.

A text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (OWASP's list for
CSV injection) gets a leading apostrophe, which spreadsheets read as "this is text". Numbers
(``int``, ``float``, ``Decimal``) are written as they are: ``-0.25`` is a value, not a formula.

The one CSV Goldset hands out without this rule is the rejected-rows file of an import: it holds
the uploader's own lines byte for byte, so they can be fixed and imported again; Goldset composes no
cell of it. Its error report, which Goldset does compose, is written here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from decimal import Decimal
from typing import IO, Any

from django.http import HttpResponse

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CONTENT_TYPE = "text/csv; charset=utf-8"


def safe_cell(value: Any) -> Any:
    """The value as a CSV cell that no spreadsheet evaluates: text starting a formula gets a leading '."""
    if value is None or isinstance(value, bool | int | float | Decimal):
        return value
    text = value if isinstance(value, str) else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def read_cell(text: str) -> str:
    """A cell read back from a file this module wrote: the apostrophe that guarded a formula start goes."""
    return text[1:] if text[:1] == "'" and text[1:2] in FORMULA_STARTS and text[1:2] else text


class SafeWriter:
    """``csv.writer`` with every cell passed through :func:`safe_cell`."""

    def __init__(self, fileobj: IO[str], **fmtparams: Any):
        self._writer = csv.writer(fileobj, **fmtparams)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow([safe_cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(fileobj: IO[str], **fmtparams: Any) -> SafeWriter:
    """A CSV writer for a text file opened with ``newline=""``."""
    return SafeWriter(fileobj, **fmtparams)


def csv_text(rows: Iterable[Iterable[Any]]) -> str:
    """Rows as CSV text."""
    out = io.StringIO()
    writer(out).writerows(rows)
    return out.getvalue()


def csv_response(rows: Iterable[Iterable[Any]], *, filename: str) -> HttpResponse:
    """A CSV download of ``rows`` named ``filename``."""
    response = HttpResponse(csv_text(rows), content_type=CONTENT_TYPE)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
