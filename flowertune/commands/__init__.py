"""CLI subcommands, one module each (``add_parser(subparsers)`` + a handler returning an exit code)."""
