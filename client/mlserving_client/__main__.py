"""`python -m mlserving_client` is the `mlserving-client` command."""

import sys

from mlserving_client.cli import main

sys.exit(main())
