"""``fleetplane rollout list|status|pause|resume|abort|promote|undo`` as an operator types them.

The server runs as a process without controllers; the test plays the rollout controller:
it writes Rollout objects whose status is what the real engine (``controllers/rollout``)
produced for a simulated fleet, straight into the server's store (the server's watch sees
another process's commits within a second). The CLI only ever talks HTTP.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from fleetplane.cli.rollout_cmd import action_problem, plain_status, progress_line, rich_status, stop_lines
from fleetplane.controllers.rollout import RolloutState, SiteObservation, Strategy, step
from fleetplane.core.store import Store, open_store
from fleetplane.kinds import ROLLOUT
from tests.cli.test_cli import CLI, ok, one_line_error, run
from tests.controllers.rollout.fleet import Run, drive, fleet_of, names
from tests.support.server import ServerProcess

TENANT = "default"
NS = "ops"
ROLLING = {"type": "rolling", "batchSize": 10, "maxFailures": 1}
CANARY = {"type": "canary", "batchSize": 10, "canary": {"sites": ["site-000"], "promotion": "manual"}}
CANARY_AUTO = {"type": "canary", "batchSize": 10, "canary": {"sites": ["site-000"], "soakSeconds": 30}}


def engine_run(strategy: dict[str, Any], *, fails: int = 0, until: str | None = None, n: int = 30) -> Run:
    """Drive the real engine over ``n`` simulated sites; ``fails`` of them fail to install."""
    fleet = fleet_of(names(n), delay=5.0)
    for name in names(n)[-fails:] if fails else []:
        fleet.sites[name].outcome = "fail"
    start = time.time() - 120
    if until is None:
        return drive(Strategy.from_spec(strategy), fleet, start=start)
    return drive(
        Strategy.from_spec(strategy), fleet, start=start, until=lambda s: s.phase == until, must_finish=True
    )


def rollout_obj(
    name: str, state: RolloutState, strategy: dict[str, Any], generation: int = 2
) -> dict[str, Any]:
    return ROLLOUT.normalize(
        {
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "intent": {
                    "kind": "OsUpgrade",
                    "name": "fleetos",
                    "generation": generation,
                    "previousGeneration": generation - 1,
                },
                "strategy": strategy,
                # What the operator asked for, as far as the engine has acted on it.
                **state.operator.to_dict(),
            },
            "status": state.to_dict(),
        }
    )


def put(store: Store, obj: dict[str, Any]) -> dict[str, Any]:
    """Create the rollout, or write its status as the controller does."""
    m = obj["metadata"]
    current = store.get_or_none(TENANT, "Rollout", m["namespace"], m["name"])
    if current is None:
        return store.create(TENANT, obj)
    return store.update(TENANT, {**current, "status": obj["status"]}, part="status")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("rollout-cli") / "data", extra_args=["--no-controllers"])
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def store(srv: ServerProcess) -> Iterator[Store]:
    s = open_store(f"sqlite:///{srv.data_dir / 'fleetplane.db'}")
    try:
        yield s
    finally:
        s.close()


def stored(store: Store, name: str) -> dict[str, Any]:
    return store.get(TENANT, "Rollout", NS, name)


# -- status and list ----------------------------------------------------------------------------


def test_status_shows_phase_waves_counts_and_why_it_stopped(srv: ServerProcess, store: Store) -> None:
    failed = engine_run(ROLLING, fails=3)
    assert failed.state.phase == "Failed"
    put(store, rollout_obj("osupgrade-fleetos-2", failed.state, ROLLING))
    text = ok(run(srv, "rollout", "status", "osupgrade-fleetos-2", "-n", NS))
    lines = text.splitlines()
    assert lines[0] == (
        f"rollout {NS}/osupgrade-fleetos-2: OsUpgrade/fleetos revision 2 (previous 1), strategy rolling"
    )
    assert lines[1].startswith("phase: Failed for ")
    assert "eta: -" in lines
    c = failed.state.counts
    assert f"30 sites: {c['succeeded']} succeeded, {c['failed']} failed" in text
    # One line per wave with its counts; the last wave never started.
    assert "wave 0 (batch): 10/10 done, 10 succeeded, 0 failed, 0 in progress, 0 pending" in lines
    assert "wave 2 (batch): " in text and text.count("wave ") == 3
    assert "reason: FailureBudgetExceeded" in lines
    message = next(line for line in lines if line.startswith("message: "))
    assert "site-029" in message and "install failed" in message
    assert "\x1b[" not in text  # not a terminal: no colours or cursor movement


def test_list_shows_every_rollout_with_progress_and_the_newest_is_found_by_intent(
    srv: ServerProcess, store: Store
) -> None:
    half = engine_run(ROLLING, until="Progressing", n=30)
    done = engine_run(ROLLING)
    put(store, rollout_obj("osupgrade-fleetos-3", done.state, ROLLING, generation=3))
    put(store, rollout_obj("osupgrade-fleetos-4", half.state, ROLLING, generation=4))
    text = ok(run(srv, "rollout", "list", "-n", NS))
    rows = {line.split()[0]: line.split() for line in text.splitlines()[1:] if line.strip()}
    assert text.splitlines()[0].split()[:6] == ["NAME", "INTENT", "REVISION", "STRATEGY", "PHASE", "PROGRESS"]
    assert rows["osupgrade-fleetos-3"][1:6] == ["OsUpgrade/fleetos", "3", "rolling", "Completed", "30/30"]
    assert rows["osupgrade-fleetos-4"][4] == "Progressing"
    # KIND/INTENT names the newest revision's rollout.
    newest = ok(run(srv, "rollout", "status", "osupgrade/fleetos", "-n", NS))
    assert newest.startswith(f"rollout {NS}/osupgrade-fleetos-4:")
    line = one_line_error(run(srv, "rollout", "status", "osupgrade/nope", "-n", NS))
    assert 'no rollout of OsUpgrade "nope"' in line
    line = one_line_error(run(srv, "rollout", "status", "missing-1", "-n", NS))
    assert "NotFound" in line and "missing-1" in line


def test_a_terminal_draws_one_progress_bar_per_wave_with_its_counts() -> None:
    state = engine_run(ROLLING, fails=3).state
    console = Console(record=True, width=120, force_terminal=True, color_system="truecolor")
    console.print(rich_status(rollout_obj("osupgrade-fleetos-2", state, ROLLING), time.time()))
    text = console.export_text()
    bars = [line for line in text.splitlines() if line.startswith("wave ")]
    assert len(bars) == 3
    assert "━" in bars[0] and "10/10" in bars[0] and "✓ 10" in bars[0] and "✗ 0" in bars[0]
    assert "✗ 3" in bars[2] or "✗ 3" in bars[1]
    assert "Failed" in text and "FailureBudgetExceeded" in text
    # A long rollout keeps the screen short: the waves around the current one, the rest summed up.
    many = engine_run({"type": "rolling", "batchSize": 1}, until="Progressing", n=60).state
    console = Console(record=True, width=120, force_terminal=True)
    console.print(rich_status(rollout_obj("osupgrade-fleetos-9", many, ROLLING), time.time()))
    text = console.export_text()
    assert sum(1 for line in text.splitlines() if line.startswith("wave ")) == 12
    assert "more waves (" in text


# -- following with -w ----------------------------------------------------------------------------


def _follow(srv: ServerProcess, name: str) -> subprocess.Popen[str]:
    env = {**srv.env(), "COLUMNS": "200"}
    return subprocess.Popen(
        [*CLI, "rollout", "status", name, "-n", NS, "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("rollout "), line
    return line


def test_watch_follows_the_rollout_until_it_completes(srv: ServerProcess, store: Store) -> None:
    strategy = {"type": "rolling", "batchSize": 5}
    run_ = engine_run(strategy, n=15)
    states = [s for s, r in zip(run_.states, run_.results, strict=True) if r.changed]
    put(store, rollout_obj("osupgrade-fleetos-20", states[0], strategy, generation=20))
    proc = _follow(srv, "osupgrade-fleetos-20")
    try:
        first = _first_line(proc)  # it has read the rollout: every later write reaches its watch
        time.sleep(0.5)
        assert proc.poll() is None, "it stopped following a running rollout"
        for state in states[1:]:
            put(store, rollout_obj("osupgrade-fleetos-20", state, strategy, generation=20))
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=30)
        stdout = first + stdout
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout + stderr
    progress = [line for line in stdout.splitlines() if line[:2].isdigit() and " Progressing " in line]
    assert progress, stdout  # one timestamped line per change, for logs
    assert "Completed" in stdout.splitlines()[-1] or "phase: Completed" in stdout
    assert "15 sites: 15 succeeded, 0 failed, 0 in progress, 0 pending" in stdout


def test_watch_exits_non_zero_naming_the_reason_when_the_rollout_fails(
    srv: ServerProcess, store: Store
) -> None:
    run_ = engine_run(ROLLING, fails=3)
    put(store, rollout_obj("osupgrade-fleetos-21", run_.states[0], ROLLING, generation=21))
    proc = _follow(srv, "osupgrade-fleetos-21")
    try:
        _first_line(proc)
        put(store, rollout_obj("osupgrade-fleetos-21", run_.state, ROLLING, generation=21))
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert stderr.strip() == 'error: rollout "osupgrade-fleetos-21" stopped: Failed (FailureBudgetExceeded)'
    assert "reason: FailureBudgetExceeded" in stdout


# -- actions --------------------------------------------------------------------------------------


def test_pause_resume_abort_undo_patch_the_spec_and_refuse_what_the_phase_does_not_allow(
    srv: ServerProcess, store: Store
) -> None:
    running = engine_run(ROLLING, until="Progressing")
    put(store, rollout_obj("osupgrade-fleetos-30", running.state, ROLLING, generation=30))
    name = "osupgrade-fleetos-30"
    out = ok(run(srv, "rollout", "pause", name, "-n", NS))
    assert out.strip() == f"rollout/{name}: pause requested (phase Progressing)"
    assert stored(store, name)["spec"]["paused"] is True
    assert "a pause is already requested" in one_line_error(run(srv, "rollout", "pause", name, "-n", NS))
    ok(run(srv, "rollout", "resume", name, "-n", NS))
    assert stored(store, name)["spec"]["paused"] is False
    line = one_line_error(run(srv, "rollout", "resume", name, "-n", NS))
    assert line == f'error: rollout "{name}": it is not paused (it is Progressing)'
    line = one_line_error(run(srv, "rollout", "promote", name, "-n", NS))
    assert "nothing to promote" in line  # a rolling rollout has no soak to end
    ok(run(srv, "rollout", "abort", name, "-n", NS))
    assert stored(store, name)["spec"]["abort"] is True

    done = engine_run(ROLLING)
    put(store, rollout_obj("osupgrade-fleetos-31", done.state, ROLLING, generation=31))
    line = one_line_error(run(srv, "rollout", "abort", "osupgrade-fleetos-31", "-n", NS))
    assert line == 'error: rollout "osupgrade-fleetos-31": cannot abort a rollout that is Completed'
    assert "cannot pause" in one_line_error(run(srv, "rollout", "pause", "osupgrade-fleetos-31", "-n", NS))
    ok(run(srv, "rollout", "undo", "osupgrade-fleetos-31", "-n", NS))
    assert stored(store, "osupgrade-fleetos-31")["spec"]["rollback"] is True
    line = one_line_error(run(srv, "rollout", "undo", "osupgrade-fleetos-31", "-n", NS))
    assert "a rollback is already requested" in line


def test_promote_ends_a_manual_canary_soak(srv: ServerProcess, store: Store) -> None:
    soaking = engine_run(CANARY, until="Soaking")
    put(store, rollout_obj("osupgrade-fleetos-40", soaking.state, CANARY, generation=40))
    assert "eta: unknown" in ok(run(srv, "rollout", "status", "osupgrade-fleetos-40", "-n", NS))
    out = ok(run(srv, "rollout", "promote", "osupgrade-fleetos-40", "-n", NS))
    assert "promote requested (phase Soaking)" in out
    assert stored(store, "osupgrade-fleetos-40")["spec"]["promote"] is True


# -- the CLI's refusals are the engine's ----------------------------------------------------------


def _states() -> list[tuple[dict[str, Any], RolloutState]]:
    out: list[tuple[dict[str, Any], RolloutState]] = []
    for strategy in (ROLLING, CANARY_AUTO):
        run_ = engine_run(strategy, fails=3)
        seen = {s.phase: s for s in run_.states}
        out += [(strategy, s) for s in seen.values()]
        paused = step(run_.states[2], Strategy.from_spec(strategy), {}, 2e9, ["pause"]).state
        out.append((strategy, paused))
    rolled = engine_run(ROLLING)
    everyone = {name: SiteObservation(revision=2, applied=True) for name in rolled.state.sites}
    back = step(rolled.state, Strategy.from_spec(ROLLING), everyone, 2e9, ["rollback"]).state
    out += [(ROLLING, rolled.state), (ROLLING, back), (ROLLING, RolloutState(revision=2, previousRevision=1))]
    return out


@pytest.mark.parametrize("action", ["pause", "resume", "abort", "promote", "undo"])
def test_the_cli_refuses_exactly_what_the_engine_would_reject(action: str) -> None:
    engine_action = {"undo": "rollback"}.get(action, action)
    phases = set()
    for strategy, state in _states():
        obj = rollout_obj("x", state, strategy)
        obs = {name: SiteObservation() for name in state.sites} or {"site-000": SiteObservation()}
        result = step(state, Strategy.from_spec(strategy), obs, 3e9, [engine_action])  # type: ignore[list-item]
        assert (action_problem(action, obj) is None) == (not result.rejected), (action, state.phase)
        phases.add(state.phase)
    assert {"Pending", "Progressing", "Paused", "Soaking", "Completed", "Failed", "RollingBack"} <= phases


def test_following_names_the_wave_as_the_status_does_and_scores_read_as_scores() -> None:
    waves = [
        {"index": i, "role": "canary" if i == 0 else "batch", "counts": {"pending": 3}} for i in range(11)
    ]
    ro = {
        "metadata": {"name": "ab", "namespace": NS},
        "spec": {},
        "status": {
            "phase": "Soaking",
            "currentWave": 1,
            "waves": waves,
            "comparison": {"groupA": 89.52173913043478, "groupB": 91.0, "groupASites": 23, "groupBSites": 40,
                           "threshold": 5},
        },
    }  # fmt: skip
    line = progress_line(ro, time.time())
    assert "wave 1 (batch), 11 waves" in line  # "wave 1" is what the snapshot calls it too
    assert any(w.startswith("wave 1 (batch): ") for w in plain_status(ro, time.time()).splitlines())
    (comparison,) = [x for x in stop_lines(ro) if x.startswith("comparison:")]
    assert "group A health 89.5 (23 sites) vs group B 91.0 (40 sites), threshold 5" in comparison
