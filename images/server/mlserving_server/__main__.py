"""`python -m mlserving_server` == the `mlserving-server` console script."""

from mlserving_server.cli import main

raise SystemExit(main())
