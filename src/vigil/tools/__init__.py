"""Tools that work on a checkout, not parts of the running system: the benchmarks (``make bench``:
:mod:`vigil.tools.bench`; the ingest benchmark :mod:`vigil.tools.ingest_bench`), the demo (``vigil demo`` /
``make demo``: :mod:`vigil.tools.demo`, its HL7 step :mod:`vigil.tools.demo_hl7`), the dashboards' PNG renderer
(:mod:`vigil.tools.dashboards_render`) and the worker-as-a-child-process helper of the demo, benchmarks and
tests (:mod:`vigil.tools.procs`).

The runtime never imports this package; only the command line dispatches to it, lazily, inside a command
(``tests/test_architecture.py``: ``test_the_runtime_never_imports_the_tools``).
"""
