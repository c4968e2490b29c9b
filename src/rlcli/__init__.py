"""rlcli: inspect and run the classic networks of a deep-learning reading list."""

__version__ = "0.1.0"
