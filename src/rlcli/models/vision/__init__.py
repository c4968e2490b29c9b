"""The reading list's vision networks, one file per paper."""
