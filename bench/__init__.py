"""fleetplane benchmarks: ``python -m bench`` (see ``bench/__main__.py``).

Measure, don't assert: every figure lands in a Rich table and a JSON file; figures with
a target also get PASS/MISS next to them, but nothing fails when a target is missed.
"""
