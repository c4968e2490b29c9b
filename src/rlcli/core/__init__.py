"""Machinery shared by every command: counting, checkpoints, files, caches, images and text."""
