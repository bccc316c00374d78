"""``vigil api``: a small HTTP API for clinical surfaces (see :mod:`vigil.api.server`)."""
