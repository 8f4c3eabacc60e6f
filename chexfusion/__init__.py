"""chexfusion: study-level, long-tailed chest X-ray classification in the style of CheXFusion."""

__version__ = "0.1.0"
