"""The study's report: one self-contained HTML page (and summary.md) built from a run folder's files.

`write_report(run_dir)` reads `metrics.json` (the order of the parts), every part's `part.json` (claim,
paragraph, figures, tables), the tables' CSV files and `environment.json`, and writes `report.html`:
images embedded as data URIs, no network, a table of contents, numbered captions, the environment,
and a layout that reads on a phone and a desktop. `convattn report RUN_DIR` runs it again.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from convattn.utils.records import cell, markdown_table, read_csv

__all__ = ["write_report"]

_CSS = """
body{font:16px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fff}
main{max-width:60rem;margin:0 auto;padding:1rem}
h1{font-size:1.8rem;margin:.5rem 0}h2{font-size:1.35rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
nav ol{padding-left:1.2rem}p.claim{font-style:italic;color:#444}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9rem;color:#555}
.table-wrap{overflow-x:auto}table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.2rem .45rem;text-align:right}th{background:#f4f4f4}
caption{caption-side:bottom;text-align:left;font-size:.9rem;color:#555;padding-top:.3rem}
footer{font-size:.85rem;color:#555;margin-top:2rem}
"""


def _html_table(rows: list[dict[str, str]], caption: str) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(r.get(k, '')))}</td>" for k in keys) + "</tr>" for r in rows
    )
    return (
        f'<div class="table-wrap"><table><caption>{html.escape(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    alt = html.escape(caption, quote=True)
    img = f'<img src="data:image/png;base64,{data}" alt="{alt}">'
    return f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _settings(run_dir: Path) -> dict[str, Any]:
    """The study's settings from study.json ({} when the folder has none)."""
    try:
        return dict(json.loads((run_dir / "study.json").read_text()).get("settings", {}))
    except (OSError, json.JSONDecodeError):
        return {}


def _parts(run_dir: Path) -> list[dict[str, Any]]:
    order = list(json.loads((run_dir / "metrics.json").read_text()))
    return [json.loads((run_dir / key / "part.json").read_text()) for key in order]


def write_report(run_dir: Path) -> Path:
    """Write report.html and summary.md for the finished run in `run_dir`; return the HTML path."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").exists():
        raise FileNotFoundError(f"{run_dir} holds no finished study (metrics.json is missing)")
    env = json.loads((run_dir / "environment.json").read_text())
    parts = _parts(run_dir)
    figure_no, table_no = 0, 0
    sections, md = [], ["# convattn study", ""]
    device = env.get("cuda") or "CPU"
    threads = env["torch_threads"]
    where = (
        f"convattn {env['convattn']}, torch {env['torch']}, {threads} thread{'s' * (threads != 1)}, {device}"
    )
    settings = _settings(run_dir)
    if settings.get("quick"):
        where += ". A quick run (--quick): a smoke-test budget, too small to judge the claims"
    if settings.get("data"):
        where += f". Data: {settings['data']}"
    md += [where + ".", ""]
    for part in parts:
        key, folder = part["key"], run_dir / part["key"]
        body = [f'<section id="{html.escape(key)}"><h2>{html.escape(part["title"])}</h2>']
        body.append(f'<p class="claim">{html.escape(part["claim"])}</p><p>{html.escape(part["text"])}</p>')
        md += [f"## {part['title']}", "", f"*{part['claim']}*", "", part["text"], ""]
        for fig in part["figures"]:
            figure_no += 1
            caption = f"Figure {figure_no}. {fig['caption']}"
            body.append(_image(folder / fig["file"], caption))
            md += [f"![{caption}]({key}/{fig['file']})", ""]
        for tab in part["tables"]:
            table_no += 1
            caption = f"Table {table_no}. {tab['caption']}"
            rows = read_csv(folder / tab["file"])
            (folder / tab["file"]).with_suffix(".md").write_text(markdown_table(rows))
            body.append(_html_table(rows, caption))
            md += [markdown_table(rows), caption, ""]
        body.append("</section>")
        sections.append("".join(body))
    toc = "".join(f'<li><a href="#{html.escape(p["key"])}">{html.escape(p["title"])}</a></li>' for p in parts)
    env_rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in env.items()
    )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>convattn study</title><style>{_CSS}</style></head><body><main>"
        f"<h1>convattn study</h1><p>{html.escape(where)}.</p>"
        f'<nav aria-label="Contents"><h2>Contents</h2><ol>{toc}</ol></nav>'
        + "".join(sections)
        + '<footer><h2 id="environment">Environment</h2><div class="table-wrap"><table>'
        f"{env_rows}</table></div><p>Timings are wall-clock on this machine with the threads above; each "
        "part records its own seconds in part.json.</p></footer></main></body></html>\n"
    )
    out = run_dir / "report.html"
    out.write_text(page)
    (run_dir / "summary.md").write_text("\n".join(md))
    return out
