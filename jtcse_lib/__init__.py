"""jtcse_lib: the reference companion library for the JTCSE paper (arXiv 2505.02366)."""

__version__ = "0.2.0"


def load_twin(path, device=None):
    """Load a trained or exported twin; `.encode(sentences)` gives the sum of its towers' [CLS] vectors.

    An alias of `jtcse_lib.evaluate.load_twin`, imported lazily so that `import jtcse_lib` stays light.
    """
    from .evaluate import load_twin as _load_twin

    return _load_twin(path, device=device)
