"""Training pipeline: BTS-like CSV -> cleaned series -> Keras model -> verified TFLite package.

TensorFlow is imported lazily (models.py, export.py) so that the CLI's --help, the
generator and the registry commands start quickly and work without it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
