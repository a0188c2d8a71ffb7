"""``python -m sluiceway`` runs the CLI."""

from sluiceway.cli.main import main

raise SystemExit(main())
