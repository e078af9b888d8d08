"""landmark-kaggle: Google Landmark Recognition from raw images to a GAP-scored submission.

Importing the package is cheap on purpose: TensorFlow is imported only by the
modules that need it, so ``landmark-kaggle --help`` and the data tools start fast.
"""

__version__ = "0.1.0"
