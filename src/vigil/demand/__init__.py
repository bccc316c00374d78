"""Resource demand per ward: calibrated per-patient probabilities aggregated into count forecasts.

Modules, one per stage:

* :mod:`.poisson_binomial` — the count's distribution (exact DP, refined normal approximation), intervals,
  P(count > capacity).
* :mod:`.labels` — what "needs the resource within h hours" means on PhysioNet rows.
* :mod:`.calibration` — score / NEWS2 -> probability maps (isotonic, PAV) and their JSON file.
* :mod:`.fitting` — scoring a split offline and fitting the calibration (``vigil demand calibrate``).
* :mod:`.census` — ward membership from out-of-order ADT events.
* :mod:`.aggregate` — a ward's forecast, its ``resource-demand`` record and capacity alerts.
* :mod:`.state`, :mod:`.job` — the streaming job (``vigil demand run``).
* :mod:`.backtest`, :mod:`.report` — ``vigil demand backtest``.

Nothing is imported here (no work at import time); import the modules.
"""

__all__: list[str] = []
