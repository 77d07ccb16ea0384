"""Records of results: the one CSV reader and writer, the one Markdown table, heat-map panels as CSV, and
atomic writes of files a crash must not tear."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "TEMPORARY_NAME",
    "atomic_write_bytes",
    "cell",
    "markdown_table",
    "read_csv",
    "read_panels",
    "typed",
    "write_csv",
    "write_panels",
]


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write `rows` (dicts with the same keys) as a CSV with a header, creating parent folders."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV with a header, as dicts of strings.

    Raises:
        FileNotFoundError: naming the file and its folder.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing from {path.parent}")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def typed(value: str) -> Any:
    """A CSV cell back as the int or float `write_csv` wrote, else the string itself."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def cell(value: Any) -> str:
    """A table cell for people: floats to 4 significant digits (the CSV keeps every digit)."""
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    if text.lstrip("-").isdigit() or number != number:  # an int, or NaN as written
        return text
    return f"{number:.4g}"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-style Markdown table of `rows` (dicts with the same keys), numbers rounded by `cell`."""
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_panels(
    path: Path, panels: Sequence[tuple[Any, str, Sequence[str] | None, Sequence[str] | None]]
) -> Path:
    """Write heat-map panels (2-D values, title, row labels or None, column labels or None) as one CSV.

    Long format, one row per cell: panel, title, row, col, row_label, col_label, value. `read_panels`
    gives the panels back, so a figure can be drawn again from the file alone.
    """
    rows = []
    for p, (values, title, row_labels, col_labels) in enumerate(panels):
        data = (
            values.detach().cpu().double().tolist()
            if hasattr(values, "detach")
            else [list(r) for r in values]
        )
        for i, line in enumerate(data):
            for j, v in enumerate(line):
                rows.append(
                    {
                        "panel": p,
                        "title": title,
                        "row": i,
                        "col": j,
                        "row_label": "" if row_labels is None else row_labels[i],
                        "col_label": "" if col_labels is None else col_labels[j],
                        "value": repr(float(v)),
                    }
                )
    return write_csv(path, rows)


def read_panels(path: Path) -> list[tuple[list[list[float]], str, list[str] | None, list[str] | None]]:
    """The panels `write_panels` wrote: [(values as nested lists, title, row labels, column labels)]."""
    cells: dict[int, list[dict[str, str]]] = {}
    for r in read_csv(path):
        cells.setdefault(int(r["panel"]), []).append(r)
    panels = []
    for p in sorted(cells):
        group = cells[p]
        n_rows = 1 + max(int(r["row"]) for r in group)
        n_cols = 1 + max(int(r["col"]) for r in group)
        values = [[0.0] * n_cols for _ in range(n_rows)]
        row_labels, col_labels = [""] * n_rows, [""] * n_cols
        for r in group:
            i, j = int(r["row"]), int(r["col"])
            values[i][j] = float(r["value"])
            row_labels[i], col_labels[j] = r["row_label"], r["col_label"]
        panels.append(
            (
                values,
                group[0]["title"],
                row_labels if any(row_labels) else None,
                col_labels if any(col_labels) else None,
            )
        )
    return panels


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# The temporary file `atomic_write_bytes` writes beside `path`: ".NAME.tmp-PID", PID the writer's.
TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>[0-9]+)")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` by `data` atomically (temporary file in the same folder, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # a kill leaves it: see TEMPORARY_NAME
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
