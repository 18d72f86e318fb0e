"""Write the example's site files: scikit-learn's Wisconsin breast cancer table (bundled with
scikit-learn, nothing downloaded) dealt to five hospitals of different sizes, one CSV each,
with the diagnosis as a word in the column "diagnosis". Run: python make_sites.py"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer

data = load_breast_cancer(as_frame=True)
table = data.frame.rename(columns={"target": "diagnosis"})
table["diagnosis"] = np.where(table["diagnosis"] == 1, "benign", "malignant")
order = np.random.default_rng(0).permutation(len(table))
sizes = [0.35, 0.25, 0.2, 0.12, 0.08]  # a large hospital and small clinics
cuts = np.cumsum([round(s * len(table)) for s in sizes])[:-1]
here = Path(__file__).parent / "sites"
here.mkdir(exist_ok=True)
for i, rows in enumerate(np.split(order, cuts)):
    table.iloc[rows].to_csv(here / f"hospital-{'abcde'[i]}.csv", index=False)
    print(f"sites/hospital-{'abcde'[i]}.csv: {len(rows)} rows")
