"""The ``xal`` command line."""
