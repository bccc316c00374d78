"""``vigil api``: the clinicians' HTTP API — current risk and NEWS2 per pseudonymised patient and per ward, open
alerts, and acknowledgements (``alert-acks`` + the ``audit`` trail). See docs/api.md."""
