"""alseg: active learning experiments for semantic segmentation."""

__version__ = "0.1.0"
