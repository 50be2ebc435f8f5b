"""Writes for the annotate app, one module per area; every function is `<entity>_<action>`."""
