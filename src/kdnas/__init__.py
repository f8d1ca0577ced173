"""kdnas: search small student transformers and teach each one with several teachers at once."""

__version__ = "0.1.0"
