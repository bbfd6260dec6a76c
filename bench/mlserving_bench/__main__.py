"""`python -m mlserving_bench` runs the benchmark (see --help)."""

from mlserving_bench.cli import main

raise SystemExit(main())
