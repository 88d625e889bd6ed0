"""Benchmarks of orderedtask (pytest-benchmark suites and the standalone ``compare.py``).

This file makes ``benchmarks`` a package so that pytest puts the repository root on
``sys.path`` (the in-place build is what gets measured) and so that ``benchmarks/test_*.py``
never clash with same-named modules under ``tests/``.
"""
