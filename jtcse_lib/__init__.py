"""jtcse_lib: the reference companion library for the JTCSE paper (arXiv 2505.02366)."""

__version__ = "0.1.0"
