"""The command-line layer: one module per group of ``balancedness`` commands, plus their shared helpers.

``balancedness/cli.py`` registers every command from here. Modules import their heavy dependencies
(numpy, torch, transformers) inside the command functions, so ``balancedness --help`` stays fast.
"""
