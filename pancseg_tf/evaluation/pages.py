"""The report's HTML pages: ``index.html`` (counts, the paper's table, the DSC box plot, every case
with its montage) and ``cases/<case>.html`` (the case's metrics, its montage whose tiles link to
their slices, and a slice scroller). Plain HTML and inline JavaScript, no external resources:
the report folder works offline. Each page counts its images once loaded
(``data-images-total`` / ``data-images-loaded`` on ``<body>``) and says so when one is missing.

Plain Python; nothing here imports TensorFlow.
"""

from __future__ import annotations

import html
import json
import urllib.parse
from collections.abc import Mapping, Sequence

from pancseg_tf.evaluation.figures import ORIENTATION_NOTE, Montage
from pancseg_tf.evaluation.tables import (
    DISPLAY,
    REPORT_KEYS,
    case_values,
    counts_line,
    table_rows,
    undefined_notes,
)

__all__ = ["case_html", "index_html"]

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
img.thumb { width: 320px; }
img.montage { display: block; max-width: none; }
figure { margin: 0 0 2em; }
.missing { color: #b00000; font-weight: bold; }
.legend .gt { color: #00a000; } .legend .pred { color: #d00000; } .legend .both { color: #b09000; }
.viewer { display: inline-grid; grid-template-columns: 1.5em auto 1.5em; align-items: center;
          justify-items: center; gap: 0.2em; }
.viewer img { display: block; }
.controls { margin: 0.5em 0; }
.controls input[type=range] { width: 480px; vertical-align: middle; }
"""


# Counts the page's images once everything has loaded, writes the counts on <body>
# (data-images-total / data-images-loaded) and shows which failed: a report folder copied
# without its cases/ folder says so instead of showing broken images silently.
_IMAGE_CHECK_JS = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var missing = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.dataset.imagesTotal = String(images.length);
  document.body.dataset.imagesLoaded = String(images.length - missing.length);
  if (missing.length) {
    var note = document.getElementById("missing-images");
    note.hidden = false;
    note.textContent = missing.length + " image(s) did not load (is the report folder complete?): "
      + missing.map(function (i) { return i.getAttribute("src"); }).join(", ");
  }
});
"""


# The case page's slice scroller: a range input, buttons, the arrow keys and the mouse wheel
# over the image move through the slices; #slice-<n> in the address (the montage's tiles and
# the lists link there) opens slice n. Without JavaScript the page lists every slice's image.
_SCROLLER_JS = """
(function () {
  var slices = JSON.parse(document.getElementById("slice-data").textContent);
  var viewer = document.getElementById("scroller");
  var image = document.getElementById("slice-image");
  var range = document.getElementById("slice-range");
  var caption = document.getElementById("slice-caption");
  var at = 0;
  function show(n) {
    at = Math.max(0, Math.min(slices.length - 1, n));
    var s = slices[at];
    image.src = s.file;
    image.alt = "slice " + s.label;
    range.value = String(at);
    image.dataset.slice = String(s.stored);
    caption.textContent = "slice " + s.label + " (" + (at + 1) + " of " + slices.length
      + ", superior first): ground truth " + s.gt + " voxels, prediction " + s.pred
      + ", false positive " + s.fp + ", false negative " + s.fn;
  }
  function fromHash() {
    var m = /^#slice-(\\d+)$/.exec(window.location.hash);
    if (!m) { return false; }
    for (var n = 0; n < slices.length; n++) {
      if (slices[n].stored === Number(m[1])) { show(n); viewer.scrollIntoView(); return true; }
    }
    return false;
  }
  viewer.hidden = false;
  range.max = String(slices.length - 1);
  range.addEventListener("input", function () { show(Number(range.value)); });
  var previous = document.getElementById("slice-previous");
  previous.addEventListener("click", function () { show(at - 1); });
  document.getElementById("slice-next").addEventListener("click", function () { show(at + 1); });
  image.addEventListener("wheel", function (e) {
    e.preventDefault();
    show(at + (e.deltaY > 0 ? 1 : -1));
  }, { passive: false });
  document.addEventListener("keydown", function (e) {
    if (e.target === range) { return; }
    if (e.key === "ArrowDown" || e.key === "ArrowRight") { show(at + 1); e.preventDefault(); }
    if (e.key === "ArrowUp" || e.key === "ArrowLeft") { show(at - 1); e.preventDefault(); }
  });
  window.addEventListener("hashchange", fromHash);
  if (!fromHash()) { show(Number(viewer.dataset.start)); }
})();
"""


_LEGEND = (
    '<p class="legend">Outlines: <span class="gt">green: ground truth</span>, '
    '<span class="pred">red: prediction</span>, <span class="both">yellow: both</span>. '
    f"Axial slices in the {html.escape(ORIENTATION_NOTE)} (as PACS viewers show them).</p>"
)


def _page(title: str, body: Sequence[str], scripts: Sequence[str] = ()) -> bytes:
    """A complete HTML page: the shared style, ``body``, the image check and ``scripts``."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        '<p id="missing-images" class="missing" hidden></p>',
        *body,
        f"<script>{_IMAGE_CHECK_JS}</script>",
        *(f"<script>{script}</script>" for script in scripts),
        "</body>",
        "</html>",
    ]
    return ("\n".join(parts) + "\n").encode("utf-8")


def _href(path: str) -> str:
    return html.escape(urllib.parse.quote(path))


def index_html(
    summary: Mapping[str, object],
    rows: Sequence[tuple[str, Mapping[str, object]]],
    montages: Mapping[str, str],
    boxplot: str | None,
) -> bytes:
    """``index.html``: a summary's counts, table and notes, the DSC box plot (``boxplot``, None
    for none), the unpaired and failed cases, and each evaluated case of ``rows`` with its
    montage (``montages``: case -> PNG, relative to the report folder)."""
    e = html.escape

    def link(href: str, text: str) -> str:
        return f'<a href="{_href(href)}">{e(text)}</a>'

    parts = [
        "<h1>Pancreas segmentation: evaluation</h1>",
        f"<p>{e(counts_line(summary))}</p>",
        "<p>Files: "
        + ", ".join(link(name, name) for name in ("metrics.csv", "summary.json", "summary.md"))
        + "</p>",
        "<h2>Summary</h2>",
        "<table>",
        "<tr><th>metric</th><th>mean ± std</th><th>min</th><th>max</th><th>n</th></tr>",
    ]
    for row in table_rows(summary["metrics"]):
        parts.append("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>")
    parts.append("</table>")
    for note in undefined_notes(summary["metrics"]):
        parts.append(f"<p>{e(note)}</p>")
    if boxplot is not None:
        parts += [
            "<h2>DSC per case</h2>",
            f'<p><img src="{_href(boxplot)}" alt="box plot of the DSC per case"></p>',
        ]
    unpaired = summary["unpaired"]
    if unpaired["prediction_only"] or unpaired["ground_truth_only"]:
        parts += ["<h2>Unpaired cases (not evaluated)</h2>", "<ul>"]
        for case in unpaired["prediction_only"]:
            parts.append(f"<li>{e(case)}: prediction without ground truth</li>")
        for case in unpaired["ground_truth_only"]:
            parts.append(f"<li>{e(case)}: ground truth without prediction</li>")
        parts.append("</ul>")
    if summary["failed"]:
        parts += ["<h2>Failed cases (not evaluated)</h2>", "<ul>"]
        for entry in summary["failed"]:
            parts.append(f"<li>{e(entry['case'])}: {e(entry['reason'])}</li>")
        parts.append("</ul>")
    if rows:
        parts += [
            "<h2>Cases</h2>",
            _LEGEND,
            "<p>Each case's page has its montage at full size and a scroller through every "
            "slice with either mask.</p>",
            "<table>",
            "<tr><th>case</th><th>axial slices</th>"
            + "".join(f"<th>{e(DISPLAY[key][0])}</th>" for key in REPORT_KEYS)
            + "</tr>",
        ]
        for case, row in rows:
            href = montages.get(case)
            page = f"cases/{case}.html"
            image = (
                f'<a href="{_href(page)}"><img class="thumb" src="{_href(href)}" '
                f'alt="axial slices of {e(case)}"></a>'
                if href
                else ""
            )
            cells = [f"<td>{link(page, case) if href else e(case)}</td>", f"<td>{image}</td>"]
            cells += [f"<td>{e(value)}</td>" for value in case_values(row)]
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
        parts.append("<h2>Montages</h2>")
        for case, _ in rows:
            href = montages.get(case)
            if href:
                parts.append(
                    f'<figure><a href="{_href(f"cases/{case}.html")}"><img class="montage" '
                    f'src="{_href(href)}" alt="axial slices of {e(case)}"></a></figure>'
                )
    return _page("pancseg evaluation", parts)


def _slice_links(slices: Sequence[Mapping[str, object]], key: str) -> str:
    """The slices with ``key`` voxels (most first, at most 10) as links into the scroller."""
    ranked = sorted((s for s in slices if s[key]), key=lambda s: -int(s[key]))[:10]
    if not ranked:
        return "none"
    return ", ".join(
        f'<a href="#slice-{s["stored"]}" data-slice="{s["stored"]}" data-voxels="{s[key]}">'
        f"{html.escape(str(s['label']))}</a> ({s[key]} voxels)"
        for s in ranked
    )


def case_html(
    case: str,
    row: Mapping[str, object],
    montage_file: str,
    montage: Montage,
    slices: Sequence[Mapping[str, object]],
) -> bytes:
    """``cases/<case>.html``: the case's metrics, montage and slice scroller (links relative to
    ``cases/``)."""
    e = html.escape
    start = max(range(len(slices)), key=lambda n: int(slices[n]["gt"]))
    areas = "".join(
        f'<area shape="rect" coords="{t.left},{t.top},{t.right},{t.bottom}" '
        f'href="#slice-{t.stored}" title="slice {e(t.reason)}" alt="slice {t.stored}">'
        for t in montage.tiles
    )
    first = slices[start]
    data = json.dumps(list(slices)).replace("</", "<\\/")
    parts = [
        '<p><a href="../index.html">all cases</a></p>',
        f"<h1>{e(case)}</h1>",
        "<table>",
        "<tr>" + "".join(f"<th>{e(DISPLAY[key][0])}</th>" for key in REPORT_KEYS) + "</tr>",
        "<tr>" + "".join(f"<td>{e(value)}</td>" for value in case_values(row)) + "</tr>",
        "</table>",
        _LEGEND,
        f"<p>False-positive slices (predicted, not in the ground truth): "
        f'<span id="false-positive-slices">{_slice_links(slices, "fp")}</span></p>',
        f"<p>False-negative slices (in the ground truth, not predicted): "
        f'<span id="false-negative-slices">{_slice_links(slices, "fn")}</span></p>',
        "<h2>Montage</h2>",
        "<p>Click a slice to open it in the scroller below.</p>",
        f'<p><img class="montage" src="{_href(montage_file)}" width="{montage.width}" '
        f'height="{montage.height}" usemap="#tiles" alt="axial slices of {e(case)}"></p>',
        f'<map name="tiles">{areas}</map>',
        "<h2>Slices</h2>",
        f'<div id="scroller" data-start="{start}" hidden>',
        '<div class="controls"><button id="slice-previous" type="button">previous</button> '
        f'<input id="slice-range" type="range" min="0" max="{len(slices) - 1}" value="{start}" '
        'aria-label="slice"> <button id="slice-next" type="button">next</button> '
        "(or the arrow keys, or the mouse wheel over the image)</div>",
        '<div class="viewer"><span></span><span>A</span><span></span>',
        f'<span>R</span><img id="slice-image" src="{_href(str(first["file"]))}" '
        f'alt="slice {e(str(first["label"]))}"><span>L</span>',
        "<span></span><span>P</span><span></span></div>",
        '<p id="slice-caption"></p>',
        "</div>",
        f"<details><summary>Every slice ({len(slices)}) as an image</summary><ul>",
    ]
    for s in slices:
        parts.append(
            f'<li id="slice-{s["stored"]}"><a href="{_href(str(s["file"]))}">slice '
            f"{e(str(s['label']))}</a>: ground truth {s['gt']}, prediction {s['pred']}, false "
            f"positive {s['fp']}, false negative {s['fn']} voxels</li>"
        )
    parts.append("</ul></details>")
    parts.append(f'<script type="application/json" id="slice-data">{data}</script>')
    return _page(f"pancseg evaluation: {case}", parts, scripts=[_SCROLLER_JS])
