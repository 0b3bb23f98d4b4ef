"""The `avemotion` command, as `avemotion.cli.main`.

The implementation lives in the top-level module `avemotion_cli` (the console entry point), which does not import
this package, so that `avemotion --help` starts without torch and transformers; see its docstring for the
sub-command table, the option spelling (`--data_dir`, dashes accepted) and how errors are reported.
"""

from __future__ import annotations

import sys

from avemotion_cli import SUBCOMMANDS, OptionParser, build_parser, main

__all__ = ["SUBCOMMANDS", "OptionParser", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
