"""Site onboarding (``vigil onboard``): adapt a registered model to a new hospital from the site's own
silent-mode sample, register the result as a new version, gate it against the base on the site's held-back
stays and report both. See :mod:`vigil.onboarding.run`."""
