"""The ``xal`` command line: the edge of the house, which wires the core library, the scoring
service and (later) the annotator together. Nothing below imports it; ``xal_core`` stays a library."""
