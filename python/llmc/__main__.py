"""`python -m llmc <command> ...`, the same as the `llmc` command."""
from .cli import main

raise SystemExit(main())
