"""ml-serving benchmarks: one command that measures the model, the transport and our server side by side.

Run `python -m mlserving_bench --help` (or `make bench`); docs/benchmarks.md explains every row.
"""
