"""The evaluation report: classical baselines, and the report dict written as JSON/Markdown/LaTeX/CSV/HTML.

`shardzip.report.baselines` codes images with classical lossless codecs (PNG, WebP, JPEG XL, …, zstd)
and checks each decodes bit-exactly; `shardzip.report.render.write_report` validates a report dict (schema
"shardzip.report", version 1: `schema`) and writes it out with plots, one module per format (`markdown`,
`latex`, `html_page`, `plots`; JSON and CSV in `render`), the table contents they share in `tables`. This
package module stays import-light (no numpy codecs, no matplotlib) because workers import `baselines` from it.
"""

from __future__ import annotations

from shardzip.errors import ReportError

__all__ = ["ReportError"]
