"""jtcse_lib: the reference companion library for the JTCSE paper (arXiv 2505.02366)."""

__version__ = "0.2.0"


def load_twin(path, device=None):
    """Load a trained or exported twin; `.encode(sentences)` gives the sum of its towers' [CLS] vectors.

    An alias of `jtcse_lib.evaluate.load_twin`, imported lazily so that `import jtcse_lib` stays light.
    """
    from .evaluate import load_twin as _load_twin

    return _load_twin(path, device=device)


def mteb_model(path, pooling: str = "cls", **kwargs):
    """An object MTEB's `evaluate` accepts for a twin, a tower or a backbone with a pooling (needs `.[mteb]`).

    An alias of `jtcse_lib.mteb_adapter.mteb_model`, imported lazily.
    """
    from .mteb_adapter import mteb_model as _mteb_model

    return _mteb_model(path, pooling, **kwargs)
