"""Reports of attack runs: Figure 10, tables, checks, a gallery, ``summary.json`` and one self-contained HTML page.

``make_report(run_dirs, out)`` reads what ``robustvae attack`` wrote (records, run.json,
gallery) and never re-runs anything; see :mod:`robustvae.reporting.aggregate` for how
restarts and points are aggregated and :mod:`robustvae.reporting.load` for how runs merge.
Directories written by ``robustvae compress`` add a compression section
(:mod:`robustvae.reporting.compression`); a report may hold only those.
:func:`write_compression_figures` draws a compression run's own figures from its files.
The tables as text cells (for a console as for the page) are in :mod:`robustvae.reporting.tables`.
"""

from robustvae.reporting.compression import write_compression_figures
from robustvae.reporting.load import RunSet, load_runs
from robustvae.reporting.make import make_report

__all__ = ["RunSet", "load_runs", "make_report", "write_compression_figures"]
