"""``python -m pykvm`` runs the CLI."""

from pykvm.cli import main

main()
