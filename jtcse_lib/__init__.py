"""jtcse_lib: the reference companion library for the JTCSE paper (arXiv 2505.02366)."""

__version__ = "0.1.0"


def load_twin(path, device=None):
    """Load an exported (or trained) twin; `.encode(sentences)` gives the sum of its towers' [CLS] vectors.

    A thin alias of `jtcse_lib.export.load_twin`, imported lazily so `import jtcse_lib` stays light.
    """
    from .export import load_twin as _load_twin

    return _load_twin(path, device=device)
