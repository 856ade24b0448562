"""The process settings of the long-running services, checked in a child interpreter (they
are process-wide: the test process keeps its own)."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = (
    "import gc; from fleetplane.core.process_tuning import tune_for_service; "
    "before = gc.get_freeze_count(); got = tune_for_service(); "
    "print(got.gc_thresholds, gc.get_threshold(), gc.get_freeze_count() > before, got.mmap_threshold)"
)


def probe(**env_values: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("FLEETPLANE_GC_THRESHOLD", "MALLOC_MMAP_THRESHOLD_")
    }
    env.update(env_values)
    cmd = [sys.executable, "-c", PROBE]
    return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=60)


def test_a_service_collects_less_often_freezes_its_startup_heap_and_mmaps_big_buffers() -> None:
    out = probe()
    assert out.returncode == 0, out.stderr
    # This machine's Python runs on glibc: the threshold is fixed at 128 KiB.
    assert out.stdout.strip() == "(50000, 20, 100) (50000, 20, 100) True 131072"


def test_the_environment_restores_the_defaults() -> None:
    out = probe(FLEETPLANE_GC_THRESHOLD="700,10,10", MALLOC_MMAP_THRESHOLD_="262144")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(700, 10, 10) (700, 10, 10) True None"


def test_a_bad_setting_is_named_and_the_defaults_are_used() -> None:
    for bad in ("fast", "700,10", "-1,10,10"):
        out = probe(FLEETPLANE_GC_THRESHOLD=bad)
        assert out.returncode == 0, out.stderr
        assert f"FLEETPLANE_GC_THRESHOLD must be three integers like 700,10,10, not {bad!r}" in out.stderr
        assert out.stdout.startswith("(50000, 20, 100) (50000, 20, 100) True")


def _loop_type(**env_values: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "FLEETPLANE_EVENT_LOOP"}
    env.update(env_values)
    code = (
        "import asyncio; from fleetplane.core.process_tuning import run_loop\n"
        "async def main(): return type(asyncio.get_running_loop()).__module__\n"
        "print(run_loop(main()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_agents_run_on_uvloop_unless_told_to_use_asyncio() -> None:
    assert _loop_type() == "uvloop"
    assert _loop_type(FLEETPLANE_EVENT_LOOP="asyncio").startswith("asyncio")
