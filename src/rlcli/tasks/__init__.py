"""One module per job; each returns plain result objects and never prints."""
