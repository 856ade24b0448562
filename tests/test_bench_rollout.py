"""``python -m bench --quick --only rollout``: the rollout benchmark runs and reports its figures
with their targets (the overhead of a rolling upgrade, patching 100 sites)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_rollout_bench_reports_overhead_and_patch_time(tmp_path: Path) -> None:
    out = tmp_path / "rollout.json"
    args = [sys.executable, "-m", "bench", "--quick", "--only", "rollout", "--json", str(out)]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    figures = data["figures"]
    assert figures and all(key.startswith("rollout.") for key in figures)
    total = figures["rollout.overhead_200.total_s"]
    parts = sum(figures[f"rollout.overhead_200.{p}_s"] for p in ("engine", "status", "manifests", "reports"))
    assert 0 < parts <= total  # the parts are measured inside the total
    assert figures["rollout.overhead_200.steps"] >= 10  # ten waves, at least a step each
    # Two waves of 50 sites at 210 s each: the simulated patch takes about two installs.
    assert 420 <= figures["rollout.patch100.sim_s"] <= 600
    assert data["verdicts"]["rollout.overhead_200.total_s"] in ("PASS", "MISS")
    assert data["verdicts"]["rollout.patch100.sim_s"] == "PASS"
    assert any("not a fleet run" in note for note in data["notes"])
