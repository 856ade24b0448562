"""``python -m bench --quick`` runs end to end and writes every figure (no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

STORE_FIGURES = [
    "writes_per_s.single",
    "writes_per_s.threads",
    "list_small.p50_ms",
    "list_small.p99_ms",
    "list_large.p50_ms",
    "list_large.p99_ms",
    "list_selector.p50_ms",
    "list_selector.p99_ms",
]
EXPECTED = [
    *(f"store.{backend}.{name}" for backend in ("sqlite", "postgres") for name in STORE_FIGURES),
    "membership.relabel.p50_ms",
    "membership.relabel.p99_ms",
    "membership.relabel.max_ms",
    "membership.relabel.vs_changed_avg",
    "membership.relabel.mismatches",
    "membership.recompute.index_build_s",
    "membership.recompute.add_virtual_sites_s",
    "membership.recompute.recompute_all_s",
    "membership.recompute.build_plus_recompute_s",
    "membership.recompute.members_total",
    "e2e.load_s",
    "e2e.initial_sync_s",
    "e2e.relabel_to_status.p50_ms",
    "e2e.relabel_to_status.p99_ms",
    "e2e.relabel_to_status.max_ms",
    "e2e.relabel_to_first_status.p50_ms",
    "e2e.relabel_write.p50_ms",
    "e2e.affected_vs_avg",
    "onboarding.sites",
    "onboarding.sites_per_s",
    "onboarding.ms_per_site",
    "onboarding.per_site.p50_ms",
    "onboarding.per_site.p99_ms",
    "onboarding.total_s",
    *(
        f"fanout.small.{name}"
        for name in (
            "sites",
            "onboard_s",
            "write_ms",
            "effect.p50_ms",
            "effect.p99_ms",
            "effect.max_ms",
            "effect.min_ms",
            "compiled.p50_ms",
            "compiled.max_ms",
            "delivered.p50_ms",
            "delivered.p99_ms",
            "server_rss_before_mb",
            "server_rss_connected_mb",
            "server_kb_per_site",
            "tls_floor_kb_per_conn",
            "server_kb_per_site_above_tls",
            "server_cpu_ms_per_site",
            "site_writes_per_site",
            "manifest_bytes",
            "nats.p50_ms",
            "nats.p99_ms",
            "nats.max_ms",
            "nats.kb_per_conn",
            "ratio_p99",
            "ratio_max",
        )
    ),
    *(
        f"rollout.fleet_20.{name}"
        for name in (
            "sites",
            "onboard_s",
            "write_ms",
            "total_s",
            "sites_work_s",
            "overhead_s",
            "overhead_vs_modelled_s",
            "overhead_vs_apply_latency_s",
            "waves",
            "completed_s",
            "server_cpu_s",
            "wave_mean_s",
            "gap_mean_ms",
            "react_mean_ms",
            "compile_mean_ms",
            *(f"wave{i:02d}.duration_s" for i in range(10)),
        )
    ),
    "rollout.overhead_200.total_s",
    "rollout.overhead_200.engine_s",
    "rollout.patch100.sim_s",
    "rollout.patch100.engine_cpu_ms",
]
WITH_TARGETS = [
    "membership.relabel.p50_ms",
    "membership.relabel.p99_ms",
    "membership.relabel.max_ms",
    "membership.recompute.recompute_all_s",
    "membership.recompute.build_plus_recompute_s",
    "onboarding.ms_per_site",
    "fanout.small.effect.p99_ms",
    "fanout.small.server_kb_per_site",
    "fanout.small.ratio_p99",
    "rollout.fleet_20.overhead_s",
    "rollout.fleet_20.overhead_vs_modelled_s",
    "rollout.overhead_200.total_s",
    "rollout.patch100.sim_s",
]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow
def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads(out.read_text())

    assert data["quick"] is True
    assert _is_number(data["elapsed_s"])
    machine = data["machine"]
    assert isinstance(machine["cpu_count"], int) and machine["cpu_count"] >= 1
    assert machine["python_version"] == ".".join(str(v) for v in sys.version_info[:3])

    figures = data["figures"]
    missing = [key for key in EXPECTED if key not in figures]
    assert not missing, f"missing figures: {missing}"
    not_numbers = {key: figures[key] for key in EXPECTED if not _is_number(figures[key])}
    assert not not_numbers, f"non-numeric figures: {not_numbers}"
    assert set(figures) == set(data["units"]) == set(data["labels"])
    for key in WITH_TARGETS:
        assert _is_number(data["targets"][key])
        assert data["verdicts"][key] in ("PASS", "MISS")
    # The TLS floor measured TLS: a plain TCP connection costs about 1 KB, a TLS one tens.
    assert figures["fanout.small.tls_floor_kb_per_conn"] > 5
    # Correctness is no timing: the incremental engine agrees with brute force.
    assert figures["membership.relabel.mismatches"] == 0
    # The fleet rollout ran all 20 sites in 10 waves to Completed (a failed run leaves a note).
    assert figures["rollout.fleet_20.sites"] == 20
    assert figures["rollout.fleet_20.waves"] == 10
    assert not [note for note in data["notes"] if note.startswith("rollout: fleet run")]
    assert not [note for note in data["notes"] if "fleet run" in note and "FAILED" in note]
    # The table was printed too.
    assert "SQLite" in result.stdout and "PostgreSQL" in result.stdout
    assert "PASS" in result.stdout or "MISS" in result.stdout


def test_only_runs_the_named_benchmark_and_rejects_unknown(tmp_path: Path) -> None:
    out = tmp_path / "only.json"
    args = [sys.executable, "-m", "bench", "--quick", "--only", "membership", "--json", str(out)]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())["figures"]
    assert figures and all(key.startswith("membership.") for key in figures)

    bad = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nope", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "unknown benchmark" in bad.stderr
