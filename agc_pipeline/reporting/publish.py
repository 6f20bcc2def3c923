"""Publishing a report: a stand-alone HTML page and a W&B run with its figures and tables.

The HTML converter handles exactly the Markdown the report writes (headings, paragraphs,
pipe tables, images). The W&B run (``job_type="report"``) goes into the sweep's group, so
that ``wandb sync`` of the jobs' runs and of this one publishes the complete study.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from agc_pipeline.reporting.sinks import WandbSink

_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)$")
_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
          "table{border-collapse:collapse;font-size:.85em;margin:1em 0}"
          "td,th{border:1px solid #ccc;padding:.25em .5em}th{background:#f3f3f3}"
          "img{max-width:100%}code{background:#f3f3f3}")


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(markdown: str, title: str) -> str:
    """A complete HTML page for the report's Markdown."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            head, body = _cells(block[0]), [_cells(b) for b in block[2:]]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head)
                       + "</tr>" + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r)
                                           + "</tr>" for r in body) + "</table>")
            continue
        heading = re.match(r"^(#{1,6}) (.*)$", line)
        image = _IMAGE.match(line)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif image:
            out.append(f'<p><img src="{html.escape(image["src"])}" '
                       f'alt="{html.escape(image["alt"])}"></p>')
        elif line:
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body>\n" + "\n".join(out)
            + "\n</body></html>\n")


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    """A table row: mean ± std pairs split in two columns, nested values dropped."""
    row: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, tuple | list) and len(value) == 2 and key not in ("paths",) \
                and all(isinstance(v, int | float) for v in value):
            row[key], row[f"{key}_std"] = value
        elif value is None or isinstance(value, str | int | float | bool):
            row[key] = value
    return row


def publish_wandb(report: dict[str, Any], figures: list[Path], out: Path, *, group: str,
                  project: str = "agc_pipeline", mode: str = "offline",
                  entity: str | None = None) -> None:
    """Log the report's figures and tables as one W&B run in ``group`` (files under
    ``out/wandb``)."""
    config = {"report": {"title": report.get("title"), "runs": report.get("runs"),
                         "inputs": report.get("inputs")}}
    sink = WandbSink(out, config, project=project, group=group, job_type="report",
                     mode=mode, entity=entity, name=f"report-{group}")
    try:
        for figure in figures:
            sink.image(figure.stem, figure)
        train = [_flat(g) for g in report.get("groups", [])]
        if train:
            columns = sorted({key for row in train for key in row})
            sink.table("train_summary", [{c: row.get(c) for c in columns} for row in train])
        for i, run in enumerate(report.get("analysis", [])):
            rows = [{k: v for k, v in p.items() if not isinstance(v, dict)} | {"run": run["label"]}
                    for p in run["points"]]
            sink.table(f"analysis_points_{i}", rows)
        sink.summary({"runs": report.get("runs", 0), "title": report.get("title") or ""})
    finally:
        sink.close()
