"""The runtime never imports torch: only realtime.train and the exporters do."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import importlib, pkgutil, sys
import realtime
names = [
    m.name
    for m in pkgutil.walk_packages(realtime.__path__, "realtime.")
    if not m.name.startswith(("realtime.train", "realtime.export")) and not m.name.endswith("__main__")
]
for name in names:
    importlib.import_module(name)
print(len(names), "torch" in sys.modules)
"""


def test_no_runtime_module_imports_torch():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    count, torch_loaded = out.stdout.split()
    assert int(count) > 40  # every runtime module was imported
    assert torch_loaded == "False"
