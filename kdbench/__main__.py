"""Command line: `python -m kdbench run|list|leaderboard|check|reproduce|evaluate|export ...` (also the `kdbench`
console script).

Bad input is one line on stderr and exit code 2; nothing is written before the input is validated. The arguments
are in cli/args.py, the commands in cli/run.py and cli/results.py. Installed plugins (the `kdbench.plugins` entry
points) and those given with `--plugin` are imported first, once kdbench itself is (core/plugins.py).
"""

from __future__ import annotations

import sys

from .cli.args import build_parser
from .cli.results import cmd_check, cmd_evaluate, cmd_export, cmd_leaderboard, cmd_list
from .cli.run import cmd_reproduce, cmd_run
from .core.errors import KdbenchError
from .core.plugins import load_all


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        load_all(getattr(args, "plugins", []))
        return {"run": cmd_run, "list": cmd_list, "leaderboard": cmd_leaderboard,
                "reproduce": cmd_reproduce, "check": cmd_check, "evaluate": cmd_evaluate,
                "export": cmd_export}[args.command](args)
    except KdbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # every finished record is on disk; a re-run resumes after them
        print("stopped by Ctrl-C; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
