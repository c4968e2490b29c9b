"""Architectures and the registry that names them."""
