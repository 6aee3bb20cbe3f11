"""The report document: one list of blocks rendered twice — Markdown and a self-contained HTML page
(figures embedded as data URIs, no external URL) — so both always agree. Split off report.py.
"""
import base64
import html
import re
from pathlib import Path


class Document:
    """Blocks of a report (headings, paragraphs, tables, side-by-side texts, figures) in order.
    `section_titles` = {number: title}; figures are saved as PNG files in `out`."""

    def __init__(self, out, section_titles, figure_dpi=110, example_chars=1500):
        self.out, self.blocks, self.figures, self.sections, self.omitted = Path(out), [], [], [], []
        self.titles, self.figure_dpi, self.example_chars = section_titles, figure_dpi, example_chars

    def section(self, number, inputs_missing=None):
        if inputs_missing:
            self.omitted.append(number)
            self.blocks.append(("omitted", f"Section {number} ({self.titles[number]}) left out: "
                                           f"{inputs_missing}."))
            return False
        self.sections.append(number)
        self.blocks.append(("h", 2, f"{number}. {self.titles[number]}"))
        return True

    def h3(self, text):
        self.blocks.append(("h", 3, text))

    def p(self, text):
        self.blocks.append(("p", text))

    def table(self, head, rows):
        self.blocks.append(("table", [str(h) for h in head], [[str(c) for c in r] for r in rows]))

    def side_by_side(self, head, texts):
        self.blocks.append(("side", head, texts))

    def figure(self, fig, name, caption):
        import matplotlib.pyplot as plt
        path = self.out / name
        fig.tight_layout()
        fig.savefig(path, dpi=self.figure_dpi, metadata={"Software": None})
        plt.close(fig)
        self.add_png(path, caption)

    def add_png(self, path, caption):
        self.figures.append(Path(path))
        self.blocks.append(("figure", Path(path).name, caption))


def _md_cell(text):
    return text.replace("|", "\\|").replace("\n", "<br>")


def _clip(text, limit):
    text = (text or "").strip()
    return text if len(text) <= limit else text[:limit].rstrip() + f" … ({len(text) - limit} more characters)"


def to_markdown(doc, title):
    lines = [f"# {title}", ""]
    for block in doc.blocks:
        kind = block[0]
        if kind == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif kind in ("p", "omitted"):
            lines += [block[1] if kind == "p" else f"*{block[1]}*", ""]
        elif kind in ("table", "side"):
            head = block[1]
            if kind == "table":
                rows = block[2]
            else:       # side by side: one row of clipped texts
                rows = [[html.escape(_clip(t, doc.example_chars)) for t in block[2]]]
            lines += ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows] + [""]
        elif kind == "figure":
            lines += [f"![{block[2]}]({block[1]})", "", f"*{block[2]}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def _inline(text):
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#1b1b1b;line-height:1.45}table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #c8c8c8;padding:.25em .5em;text-align:left;vertical-align:top}th{background:#eef1f5}
img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}
.omitted{color:#666;font-style:italic}table.side{table-layout:fixed;width:100%}
pre{white-space:pre-wrap;font-size:.82em;margin:0}
h2{border-bottom:2px solid #33507a;padding-bottom:.2em;margin-top:1.8em}"""


def to_html(doc, title):
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for block in doc.blocks:
        kind = block[0]
        if kind == "h":
            parts.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "omitted":
            parts.append(f"<p class='omitted'>{_inline(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in block[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "side":
            head = "".join(f"<th>{_inline(h)}</th>" for h in block[1])
            cells = "".join(f"<td><pre>{html.escape(_clip(t, doc.example_chars))}</pre></td>" for t in block[2])
            parts.append(f"<table class='side'><thead><tr>{head}</tr></thead><tbody><tr>{cells}</tr></tbody></table>")
        elif kind == "figure":
            data = base64.b64encode((doc.out / block[1]).read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(block[2], quote=True)}' src='data:image/png;base64,"
                         f"{data}'><figcaption>{_inline(block[2])}</figcaption></figure>")
    return "\n".join(parts) + "\n</body></html>\n"
