"""Maintenance scripts (run as `python tools/NAME.py`) and what the tests and benchmarks share with them."""
