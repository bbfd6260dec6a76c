"""The one directory where local tooling keeps slow-to-make things between runs.

Models trained for the tests and the benchmark, built images, helm and the Kubernetes binaries
live outside any clone, so a rerun or a fresh clone on the same machine is fast. The CI scripts
(ci/*.sh) read the same variable with the same default.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT = "/var/cache/ml-serving"


def cache_dir() -> Path:
    """$MLSERVING_CACHE, else /var/cache/ml-serving."""
    return Path(os.environ.get("MLSERVING_CACHE", DEFAULT))
