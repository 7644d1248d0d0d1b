"""Experiments: what runs models over data and writes records into a run directory.

* :mod:`.rundir`: the one run-directory helper (output policy, provenance, atomic
  writes, append-only records, shard merge);
* :mod:`.models`: loading and labelling the models of an experiment;
* :mod:`.attack`: the attack sweep (models x k x points x restarts);
* :mod:`.compress`: the compression experiment against JPEG;
* :mod:`.certify`: the exact analysis of the quantised context over models x points x eps;
* :mod:`.suite`: attack suites (TOML).

Experiments write records (:mod:`robustvae.records`) and files only; figures and
tables are drawn by :mod:`robustvae.reporting`. Users call them through the top-level
API (:func:`robustvae.attack`, :func:`robustvae.compress`).
"""
