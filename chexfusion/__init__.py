"""chexfusion: study-level, long-tailed chest X-ray classification in the style of CheXFusion.

The Python API (see the README)::

    import chexfusion
    model = chexfusion.load("stage2/runs/demo")
    model.predict_study(["a.jpg", "b.jpg"], views=["frontal", "lateral"])   # {class: probability}
    model.predict_csv("test.csv", image_root="data/demo")                  # a DataFrame

Importing the package is cheap: torch and the models load on first use.
"""

__version__ = "0.1.0"


def load(path, device: str | None = None, calibrated: bool = True, allow_network: bool | None = None):
    """Load a trained run folder (stage 1 or stage 2) or a Hugging Face Hub id as a :class:`chexfusion.api.Model`
    (see :func:`chexfusion.api.load`)."""
    from .api import load as _load

    return _load(path, device, calibrated, allow_network)


__all__ = ["load", "__version__"]
