"""Stage notebooks as HTML a reviewer reads in a minute.

The executed `.ipynb` keeps everything (code, parameters, every output); its HTML shows what a
reviewer needs, in this order: the verdict block (the output of the cell tagged `verdict`, or a
block saying where the notebook stopped), the parameters once as a table (from Papermill's
metadata, credentials redacted), then the outputs without code. The template is nbconvert's
`basic` plus a small stylesheet of ours (the `lab` template embeds 257 KiB of CSS per page).
"""

from __future__ import annotations

import ast
import functools
import html
import json
import logging
import warnings
from pathlib import Path
from typing import Any

from lib.config import redact_source

log = logging.getLogger(__name__)

VERDICT_TAG = "verdict"
# the notebook's defaults and Papermill's injected values: shown once, as the parameters table
PARAMETER_TAGS = {"parameters", "injected-parameters"}
SECRET_WORDS = ("token", "password", "secret", "api_key", "credential")
# scrapbook's values for the runner: no HTML form, nothing for a reader
SCRAP_PREFIX = "application/scrapbook"

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;margin:0}
main{max-width:1100px;margin:0 auto;padding:16px 24px}
section.verdict{border-left:6px solid #4c72b0;background:#f3f6fb;padding:10px 16px;
margin:8px 0 16px}
section.verdict[data-tone=good]{border-color:#2e7d32;background:#eef7ee}
section.verdict[data-tone=wait]{border-color:#c08400;background:#fdf6e3}
section.verdict[data-tone=stop]{border-color:#c62828;background:#fbeeee}
section.verdict h2{margin:4px 0 8px;font-size:1.25em}
section.verdict dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:6px 0}
section.verdict dt{color:#555}section.verdict dd{margin:0;font-weight:600}
section.verdict p.next{margin:8px 0 2px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}
details.parameters{margin:0 0 14px}
details.parameters code{white-space:pre-wrap;word-break:break-all}
.jp-Cell,.cell{margin:8px 0}
img{max-width:100%;height:auto}
pre{white-space:pre-wrap;background:#f8f8f8;padding:6px 8px;overflow-x:auto}
.output_error pre{background:#fdecea}
p.no-chart{color:#555}
"""


@functools.cache
def exporter() -> Any:
    """One exporter per process: each new one compiles its Jinja templates again (~0.5 s)."""
    from nbconvert import HTMLExporter

    return HTMLExporter(
        template_name="basic",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )


def tags(cell: Any) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def render_html(notebook: Path) -> Path:
    """HTML beside the executed notebook, rendered in-process (a subprocess costs ~3 s)."""
    import nbformat

    book = nbformat.read(notebook, as_version=4)
    html_path = notebook.with_suffix(".html")
    html_path.write_text(page(book, notebook.stem), encoding="utf-8")
    return html_path


def render_missing(run_dir: Path) -> list[Path]:
    """Render every executed notebook of a run folder that has no HTML yet: the partial
    notebooks of a failed or cancelled run are read like the others. Never raises."""
    rendered = []
    for notebook in sorted(Path(run_dir).glob("*.ipynb")):
        if notebook.with_suffix(".html").exists():
            continue
        try:
            rendered.append(render_html(notebook))
        except Exception as exc:  # the .ipynb is the record; HTML is a convenience
            log.warning("could not render %s to HTML: %s", notebook.name, exc)
    return rendered


def page(book: Any, title: str) -> str:
    """The whole HTML page of an executed notebook (see the module docstring for the order)."""
    verdict = verdict_block(book)
    table = parameters_table(book)
    body = outputs_html(book, title)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body>{verdict}\n<main>{table}\n{body}</main></body></html>\n"
    )


def verdict_block(book: Any) -> str:
    """The verdict cell's HTML output; else a block saying the notebook has no verdict and why
    (the error it stopped at, or not executed that far)."""
    for cell in book.cells:
        if VERDICT_TAG not in tags(cell):
            continue
        for output in cell.get("outputs", []):
            found = output.get("data", {}).get("text/html")
            if found:
                return "".join(found) if isinstance(found, list) else found
    error = next(
        (o for c in book.cells for o in c.get("outputs", []) if o.get("output_type") == "error"),
        None,
    )
    if error is not None:
        what = f"{error.get('ename', 'error')}: {error.get('evalue', '')}"
        title = "Failed: the notebook stopped before its verdict"
    else:
        what = "the notebook was not executed up to its verdict cell (cancelled, or still running)"
        title = "No verdict"
    return (
        '<section class="verdict" data-tone="stop">'
        f"<h2>{html.escape(title)}</h2><p>{html.escape(redact_source(what))}</p>"
        '<p class="next">Next: read the outputs below up to where they end; the .ipynb beside '
        "this page holds the code and every output.</p></section>"
    )


def parameter_defaults(book: Any) -> dict[str, str]:
    """The `parameters` cell's names and default expressions, as written."""
    for cell in book.cells:
        if "parameters" not in tags(cell):
            continue
        source = "".join(cell.source) if isinstance(cell.source, list) else cell.source
        try:
            tree = ast.parse(source)
        except SyntaxError:
            return {}
        return {
            target.id: ast.get_source_segment(source, node.value) or ""
            for node in tree.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
    return {}


def shown_value(name: str, value: str) -> str:
    if any(word in name.lower() for word in SECRET_WORDS) and value not in ("None", "null", ""):
        return "***"
    return redact_source(value)


def parameters_table(book: Any) -> str:
    """The parameters once: the notebook's defaults overridden by what Papermill injected."""
    values = parameter_defaults(book)
    injected = book.metadata.get("papermill", {}).get("parameters") or {}
    values.update({k: json.dumps(v, ensure_ascii=False) for k, v in injected.items()})
    if not values:
        return ""
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td><code>{html.escape(shown_value(k, v))}</code></td>"
        f"<td>{'given' if k in injected else 'default'}</td></tr>"
        for k, v in values.items()
    )
    return (
        f'<details class="parameters"><summary>Parameters ({len(values)})</summary>'
        f"<table><tr><th>name</th><th>value</th><th>from</th></tr>{rows}</table></details>"
    )


def reader_copy(book: Any, title: str) -> Any:
    """The notebook without the cells the page shows elsewhere (verdict, parameters) or not at
    all (stderr streams, scrapbook values, cells left with no output)."""
    import copy

    shown = copy.deepcopy(book)
    dropped, cells = 0, []
    for cell in shown.cells:
        if tags(cell) & (PARAMETER_TAGS | {VERDICT_TAG}):
            continue
        if cell.cell_type == "code":
            kept = []
            for output in cell.outputs:
                if output.get("output_type") == "stream" and output.get("name") == "stderr":
                    dropped += 1
                elif output.get("data") and all(k.startswith(SCRAP_PREFIX) for k in output.data):
                    continue
                else:
                    kept.append(output)
            cell.outputs = kept
            if not kept:
                continue
        cells.append(cell)
    shown.cells = cells
    if dropped:  # silenced at the source: anything left is a regression to fix there
        log.warning("%s: %d stderr output(s) left out of the HTML", title, dropped)
    return shown


def outputs_html(book: Any, title: str) -> str:
    """The outputs and the text of the notebook, without code, as nbconvert's `basic` HTML."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is not able to be represented")
        body, _ = exporter().from_notebook_node(reader_copy(book, title))
    return body
