"""The ``vigil`` subcommand groups, one module each (registered in :mod:`vigil.cli`)."""
