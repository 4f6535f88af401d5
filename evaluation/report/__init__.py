"""The report: stage JSONs -> tables, sections, plots -> report.json / report.md / report.html. The only place
that renders."""
