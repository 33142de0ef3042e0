"""Benchmarks of sessionrec (``python -m bench.run``); not part of the installed package."""
