"""A tiny training job for the snapver demo: fits y = w*x + b by gradient descent.

It reads data/train.csv, writes models/model.json (the numbers snapver records as
metrics) and models/checkpoint.bin (a checkpoint: the fitted line and every sample's
residual, as doubles), and appends to logs/train.log, the kinds of files a real job
leaves in a lake.
"""

import csv
import json
import struct
import sys
from pathlib import Path

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 100
rows = [(float(x), float(y)) for x, y in csv.reader(open("data/train.csv"))]
w = b = 0.0
for _ in range(epochs):
    gw = sum((w * x + b - y) * x for x, y in rows) / len(rows)
    gb = sum((w * x + b - y) for x, y in rows) / len(rows)
    w, b = w - 0.05 * gw, b - 0.05 * gb
loss = sum((w * x + b - y) ** 2 for x, y in rows) / len(rows)
Path("models/model.json").write_text(json.dumps({"w": w, "b": b, "epochs": epochs, "loss": loss}) + "\n")
residuals = [w * x + b - y for x, y in rows]
Path("models/checkpoint.bin").write_bytes(struct.pack(f"<{2 + len(rows)}d", w, b, *residuals))
with open("logs/train.log", "a") as log:
    log.write(f"epochs={epochs} loss={loss:.4f} w={w:.3f} b={b:.3f}\n")
print(f"trained {epochs} epochs: loss {loss:.4f}, w={w:.3f}, b={b:.3f}")
