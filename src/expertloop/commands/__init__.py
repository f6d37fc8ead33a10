"""Subcommands of the ``expertloop`` command, one module per workflow.

Each module defines ``add_commands(subparsers)`` that adds its subparsers
(with ``set_defaults(func=...)``). Modules import torch, napari or the
engine's heavy parts only inside the command functions, so ``expertloop
--help`` stays fast. :func:`expertloop.cli.build_parser` finds the modules.
"""
