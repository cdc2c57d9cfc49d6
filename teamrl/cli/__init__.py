"""The command line, on top of everything: ``teamrl`` (``main``), ``teamrl sweep``
(``sweep``: many training runs as processes, locally or on Ray), ``teamrl install``
(``install``), and ``launch``, the process a sweep starts for each run."""

from teamrl.cli.commands import _parser, main

__all__ = ["_parser", "main"]
