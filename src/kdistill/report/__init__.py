"""Reports: tables, plots, Markdown/HTML and model cards. matplotlib is imported here only, and lazily.

    demo.py        `kdistill demo`'s table, plots and report.md
    compare.py     a `kdistill compare` sweep's aggregates, verdict, plots, report.md and report.html
    model_card.py  the README.md and summary of a `kdistill export`
    common.py      what they share (the plotting back end, saving a figure)
"""
