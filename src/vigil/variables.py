"""Canonical clinical variables: the 34 time-varying PhysioNet 2019 measurements and the static context.

Every ingest path maps its codes onto these names (see ``vigil/data/codes.csv``); the featurizer, the
per-patient state and the trainer index arrays by position in :data:`VARIABLES`.

>>> VARIABLES[:3]
('HR', 'O2Sat', 'Temp')
>>> VAR_INDEX["Lactate"]
22
>>> len(VARIABLES), len(STATIC)
(34, 6)
"""

from __future__ import annotations

__all__ = ["VITALS", "LABS", "VARIABLES", "VAR_INDEX", "STATIC", "STATIC_INDEX", "CANONICAL_UNITS"]

VITALS: tuple[str, ...] = ("HR", "O2Sat", "Temp", "SBP", "MAP", "DBP", "Resp", "EtCO2")
LABS: tuple[str, ...] = (
    "BaseExcess", "HCO3", "FiO2", "pH", "PaCO2", "SaO2", "AST", "BUN", "Alkalinephos", "Calcium",
    "Chloride", "Creatinine", "Bilirubin_direct", "Glucose", "Lactate", "Magnesium", "Phosphate",
    "Potassium", "Bilirubin_total", "TroponinI", "Hct", "Hgb", "PTT", "WBC", "Fibrinogen", "Platelets",
)  # fmt: skip
VARIABLES: tuple[str, ...] = VITALS + LABS
VAR_INDEX: dict[str, int] = {name: i for i, name in enumerate(VARIABLES)}

# Static / administrative context, in PhysioNet column order. Age in years, Gender 1 = male,
# Unit1 = MICU, Unit2 = SICU, HospAdmTime = hours from hospital to ICU admission (<= 0), ICULOS = hours in ICU.
STATIC: tuple[str, ...] = ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime", "ICULOS")
STATIC_INDEX: dict[str, int] = {name: i for i, name in enumerate(STATIC)}

# Canonical unit (UCUM) of each variable: the unit the stored values, the features and the models use.
# Chosen to match the PhysioNet 2019 data as it is recorded (values checked against set A).
CANONICAL_UNITS: dict[str, str] = {
    "HR": "/min", "O2Sat": "%", "Temp": "Cel", "SBP": "mm[Hg]", "MAP": "mm[Hg]", "DBP": "mm[Hg]",
    "Resp": "/min", "EtCO2": "mm[Hg]", "BaseExcess": "mmol/L", "HCO3": "mmol/L", "FiO2": "1",
    "pH": "[pH]", "PaCO2": "mm[Hg]", "SaO2": "%", "AST": "U/L", "BUN": "mg/dL", "Alkalinephos": "U/L",
    "Calcium": "mg/dL", "Chloride": "mmol/L", "Creatinine": "mg/dL", "Bilirubin_direct": "mg/dL",
    "Glucose": "mg/dL", "Lactate": "mmol/L", "Magnesium": "mg/dL", "Phosphate": "mg/dL",
    "Potassium": "mmol/L", "Bilirubin_total": "mg/dL", "TroponinI": "ng/mL", "Hct": "%", "Hgb": "g/dL",
    "PTT": "s", "WBC": "10*3/uL", "Fibrinogen": "mg/dL", "Platelets": "10*3/uL",
}  # fmt: skip
