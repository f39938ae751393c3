"""The run report: one self-contained HTML page over a pipeline run directory (`vla report`).

    from stages.report import render_report
    index = render_report("runs/demo", "report.html")     # schema `report-index`

Modules: `discover` (find artifacts by their contents), `load` (read and validate them), `series`
(numbers derived from the training logs), `plotting` / `plots_*` (matplotlib figures as embedded
PNG), `sections_*` and `signals` (the page's sections), `html` (building blocks and the page),
`render` (assembly and the atomic write).
"""

from stages.report.render import build_page, check_output, render_report

__all__ = ["build_page", "check_output", "render_report"]
