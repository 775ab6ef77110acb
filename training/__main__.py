"""``python -m training``: the LightningCLI (fit, validate, test, predict) plus extra commands.

Extra commands live in their own modules, imported only when asked for, each with
``main(argv: list[str]) -> int`` receiving the arguments after the command's name.
User-facing errors (DataError, ConfigError) end as ``error: <message>`` and exit status 2.
"""

from __future__ import annotations

import importlib
import sys

from contracts.errors import ConfigError, DataError

# command -> module with main(argv) -> int
EXTRA_COMMANDS = {
    "export": "training.export.cli",
    "evaluate": "training.evaluation.cli",
    "search": "training.search",
    "ensemble": "training.ensemble_recipe",
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    try:
        if args and args[0] in EXTRA_COMMANDS:
            return int(importlib.import_module(EXTRA_COMMANDS[args[0]]).main(args[1:]) or 0)
        from training.cli import main as cli_main  # Lightning's CLI: slow, not for the extras

        cli_main(argv)  # None: LightningCLI reads sys.argv itself
        return 0
    except (DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
