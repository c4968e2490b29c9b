"""Heads added onto backbones: CSRA."""
