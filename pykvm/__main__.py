"""``python -m pykvm`` runs the CLI (through ``pykvm.process``, as the ``pykvm`` command does)."""

from pykvm.process import main

main()
