"""``fleetplane rollout list|status|pause|resume|abort|promote|undo``: follow and steer rollouts.

A ``Rollout`` (kinds/rollout.py) is created by the rollout controller per intent revision;
its status is the engine's state (phase, waves with counts, per-site state, ETA, why it
stopped). ``status`` draws one progress bar per wave on a terminal (``-w`` follows the
object with a watch and redraws in place) and plain lines otherwise, for logs and CI. The
actions patch ``spec.paused|promote|abort|rollback``; an action the rollout's phase does not
allow is refused here with the same rule the engine applies (``action_problem``), since the
engine would only ignore it. NAME is a rollout's name, or ``KIND/INTENT`` (e.g.
``osupgrade/fleetos``) for the newest rollout of that intent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fleetplane.cli.output import age, dump, table
from fleetplane.client import Client
from fleetplane.core.errors import ApiError
from fleetplane.core.registry import Column
from fleetplane.kinds import REGISTRY

PLURAL = "rollouts"
TERMINAL = frozenset({"Completed", "Failed", "Aborted", "RolledBack"})
GATED = frozenset({"canary", "ab", "blueGreen"})
MAX_WAVE_ROWS = 12  # waves drawn on a terminal; the rest are summed up in one line
# Action -> the spec field it sets and the value.
ACTIONS: dict[str, tuple[str, bool]] = {
    "pause": ("paused", True),
    "resume": ("paused", False),
    "abort": ("abort", True),
    "promote": ("promote", True),
    "undo": ("rollback", True),
}
DONE_KEYS = ("succeeded", "failed", "rolledBack", "rollbackFailed")
NamespaceOpt = Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace (default: default).")]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table | json | yaml")]


# -- reading a Rollout ------------------------------------------------------------------------------


def _status(ro: dict[str, Any]) -> dict[str, Any]:
    return ro.get("status") or {}


def phase_of(ro: dict[str, Any]) -> str:
    return str(_status(ro).get("phase") or "Pending")


def _counts(block: dict[str, Any]) -> dict[str, int]:
    counts = block.get("counts") or {}
    return {k: int(counts.get(k) or 0) for k in (*DONE_KEYS, "pending", "inProgress", "rollingBack")}


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_text(ro: dict[str, Any], now: float) -> str:
    eta = _status(ro).get("etaAt")
    phase = phase_of(ro)
    if eta is None:
        if phase in TERMINAL:
            return "-"
        return "unknown (paused)" if phase == "Paused" else "unknown"
    clock = datetime.fromtimestamp(float(eta), UTC).strftime("%H:%M:%S UTC")
    return f"in {duration(float(eta) - now)} ({clock})"


def intent_text(ro: dict[str, Any]) -> str:
    intent = (ro.get("spec") or {}).get("intent") or {}
    return f"{intent.get('kind', '?')}/{intent.get('name', '?')}"


def totals_text(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    parts = [
        f"{counts['succeeded']} succeeded",
        f"{counts['failed']} failed",
        f"{counts['inProgress']} in progress",
        f"{counts['pending']} pending",
    ]
    back = counts["rollingBack"] + counts["rolledBack"] + counts["rollbackFailed"]
    if back:
        parts.append(
            f"{counts['rolledBack']} rolled back, {counts['rollingBack']} rolling back, "
            f"{counts['rollbackFailed']} rollback failed"
        )
    return f"{total} sites: " + ", ".join(parts)


def header_lines(ro: dict[str, Any], now: float) -> list[str]:
    meta, spec, status = ro["metadata"], ro.get("spec") or {}, _status(ro)
    intent = spec.get("intent") or {}
    prev = intent.get("previousGeneration")
    strategy = (spec.get("strategy") or {}).get("type", "rolling")
    lines = [
        f"rollout {meta.get('namespace', '')}/{meta['name']}: {intent_text(ro)} revision "
        f"{intent.get('generation', '?')}"
        + (f" (previous {prev})" if prev else " (new intent)")
        + f", strategy {strategy}",
    ]
    since = status.get("phaseSince")
    phase = phase_of(ro)
    if phase == "Paused" and status.get("pausedFrom"):
        phase += f" (from {status['pausedFrom']})"
    lines.append(f"phase: {phase}" + (f" for {duration(now - float(since))}" if since else ""))
    lines.append(f"eta: {eta_text(ro, now)}")
    lines.append(totals_text(_counts(status)))
    return lines


def stop_lines(ro: dict[str, Any]) -> list[str]:
    status = _status(ro)
    out = []
    if status.get("reason"):
        out.append(f"reason: {status['reason']}")
    if status.get("message"):
        out.append(f"message: {status['message']}")
    comparison = status.get("comparison")
    if comparison:
        a, b, threshold = (_score(comparison.get(k)) for k in ("groupA", "groupB", "threshold"))
        out.append(
            f"comparison: group A health {a} ({comparison.get('groupASites')} sites) "
            f"vs group B {b} ({comparison.get('groupBSites')} sites), threshold {threshold}"
        )
    return out


def _score(value: Any) -> str:
    """A health score as the console shows it: one decimal (the mean of a group is a float)."""
    if isinstance(value, float):
        return f"{value:.1f}"
    return "-" if value is None else str(value)


def wave_line(wave: dict[str, Any]) -> str:
    c = _counts(wave)
    total = sum(c.values())
    done = sum(c[k] for k in DONE_KEYS)
    text = (
        f"wave {wave.get('index')} ({wave.get('role')}): {done}/{total} done, {c['succeeded']} succeeded, "
        f"{c['failed']} failed, {c['inProgress']} in progress, {c['pending']} pending"
    )
    back = c["rollingBack"] + c["rolledBack"] + c["rollbackFailed"]
    if back:
        text += f", {c['rolledBack'] + c['rollbackFailed']}/{back} back"
    return text


def plain_status(ro: dict[str, Any], now: float) -> str:
    """The whole status as plain text: no colours, no cursor movement, one fact per line."""
    waves = _status(ro).get("waves") or []
    return "\n".join([*header_lines(ro, now), *(wave_line(w) for w in waves), *stop_lines(ro)])


def progress_line(ro: dict[str, Any], now: float) -> str:
    """One line per change while following without a terminal (``-w`` in CI)."""
    status = _status(ro)
    waves = status.get("waves") or []
    current = int(status.get("currentWave") or 0)
    role = next((w.get("role") for w in waves if w.get("index") == current), None)
    # Waves are numbered from 0 here as in the status and its other lines ("wave 0 (canary)").
    where = f"wave {current}{f' ({role})' if role else ''}, {len(waves)} waves" if waves else "no waves"
    line = f"{phase_of(ro)} {where}, {totals_text(_counts(status))}, eta {eta_text(ro, now)}"
    if phase_of(ro) in TERMINAL and status.get("reason"):
        line += f", reason {status['reason']}"
    return line


# -- drawing on a terminal --------------------------------------------------------------------------


def _shown_waves(waves: list[dict[str, Any]], current: int) -> tuple[list[dict[str, Any]], int, int]:
    """At most MAX_WAVE_ROWS waves around the current one; also how many were left out
    before and after."""
    if len(waves) <= MAX_WAVE_ROWS:
        return waves, 0, 0
    start = max(0, min(current - 2, len(waves) - MAX_WAVE_ROWS))
    return waves[start : start + MAX_WAVE_ROWS], start, len(waves) - start - MAX_WAVE_ROWS


def rich_status(ro: dict[str, Any], now: float) -> RenderableType:
    """A header, one progress bar per wave with its counts, and why it stopped."""
    status = _status(ro)
    head = header_lines(ro, now)
    phase = phase_of(ro)
    style = {"Completed": "green", "Failed": "red", "Aborted": "yellow", "RolledBack": "yellow"}.get(
        phase, "cyan"
    )
    parts: list[RenderableType] = [Text(head[0], style="bold")]
    line = Text("phase ")
    line.append(head[1].removeprefix("phase: "), style=f"bold {style}")
    line.append(f"   eta {eta_text(ro, now)}")
    parts.append(line)
    parts.append(Text(head[3]))
    waves = status.get("waves") or []
    shown, before, after = _shown_waves(waves, int(status.get("currentWave") or 0))
    grid = Table.grid(padding=(0, 1))
    for _ in range(7):
        grid.add_column()
    if before:
        parts.append(Text(f"… {before} earlier waves", style="dim"))
    for wave in shown:
        c = _counts(wave)
        total = sum(c.values())
        done = sum(c[k] for k in DONE_KEYS)
        bar_style = "red" if c["failed"] or c["rollbackFailed"] else "green"
        grid.add_row(
            Text(f"wave {wave.get('index')}"),
            Text(str(wave.get("role")), style="dim"),
            ProgressBar(
                total=max(total, 1),
                completed=done,
                width=30,
                complete_style=bar_style,
                finished_style=bar_style,
            ),
            Text(f"{done}/{total}", justify="right"),
            Text(f"✓ {c['succeeded']}", style="green"),
            Text(f"✗ {c['failed']}", style="red" if c["failed"] else "dim"),
            Text(
                f"⟳ {c['inProgress'] + c['rollingBack']}"
                + (f" ↩ {c['rolledBack']}" if c["rolledBack"] else ""),
                style="cyan",
            ),
        )
    parts.append(grid)
    if after:
        left = sum(sum(_counts(w).values()) for w in waves[len(waves) - after :])
        parts.append(Text(f"… {after} more waves ({left} sites)", style="dim"))
    for extra in stop_lines(ro):
        parts.append(Text(extra, style="red" if phase == "Failed" else "yellow"))
    return Group(*parts)


# -- actions ----------------------------------------------------------------------------------------


def action_problem(action: str, ro: dict[str, Any]) -> str | None:
    """Why ``action`` cannot apply to this rollout now (the engine's own rule), or None."""
    spec, status = ro.get("spec") or {}, _status(ro)
    phase = phase_of(ro)
    running = phase in ("Progressing", "Soaking") or (
        phase == "Paused" and status.get("pausedFrom") in ("Progressing", "Soaking")
    )
    if action == "pause":
        if spec.get("paused"):
            return "it is already paused" if phase == "Paused" else "a pause is already requested"
        if phase not in ("Pending", "Progressing", "Soaking", "RollingBack"):
            return f"cannot pause a rollout that is {phase}"
    elif action == "resume":
        if not spec.get("paused"):
            return f"it is not paused (it is {phase})"
    elif action == "promote":
        if spec.get("promote"):
            return "a promotion is already requested"
        gated = ((spec.get("strategy") or {}).get("type") or "rolling") in GATED
        waves = status.get("waves") or []
        gate_ahead = (
            not status.get("promoted")
            and bool(waves)
            and waves[0].get("role") in ("canary", "groupA")
            and int(status.get("currentWave") or 0) == 0
        )
        if not (gated if phase == "Pending" else running and gate_ahead):
            return f"nothing to promote: the rollout is {phase} with no canary soak or A/B window ahead"
    elif action == "abort":
        if spec.get("abort"):
            return "an abort is already requested"
        if phase not in ("Pending", "Progressing", "Soaking", "Paused", "RollingBack"):
            return f"cannot abort a rollout that is {phase}"
    elif action == "undo":
        if spec.get("rollback"):
            return "a rollback is already requested"
        if phase not in ("Pending", "Progressing", "Soaking", "Paused", "Completed", "Failed", "Aborted"):
            return f"cannot undo a rollout that is {phase}"
    else:
        return f"unknown action {action!r}"
    return None


def find_rollout(client: Client, name: str, namespace: str) -> dict[str, Any]:
    """A rollout by name, or ``KIND/INTENT`` for the newest rollout of that intent."""
    if "/" not in name:
        return client.get(PLURAL, name, namespace)
    kind, _, intent = name.partition("/")
    try:
        wanted = REGISTRY.resolve(kind).kind
    except ApiError:
        wanted = kind
    found = [
        ro
        for ro in client.list_all(PLURAL, namespace)
        if ((ro.get("spec") or {}).get("intent") or {}).get("kind", "").lower() == wanted.lower()
        and ro["spec"]["intent"].get("name") == intent
    ]
    if not found:
        raise ApiError(404, "NotFound", f'no rollout of {wanted} "{intent}" in namespace "{namespace}"')
    return max(found, key=lambda ro: int(ro["spec"]["intent"].get("generation") or 0))


def request_action(
    client: Client, action: str, name: str, namespace: str, retries: int = 5
) -> dict[str, Any]:
    """Patch the operator field with the resourceVersion read, so that the phase checked is
    the phase acted on; re-check after a concurrent status write."""
    field, value = ACTIONS[action]
    for _ in range(retries):
        ro = find_rollout(client, name, namespace)
        problem = action_problem(action, ro)
        if problem is not None:
            raise ApiError(0, "Refused", f'rollout "{ro["metadata"]["name"]}": {problem}')
        body = {"metadata": {"resourceVersion": ro["metadata"]["resourceVersion"]}, "spec": {field: value}}
        try:
            return client.patch(PLURAL, ro["metadata"]["name"], body, namespace)
        except ApiError as exc:
            if exc.reason != "Conflict":
                raise
    raise ApiError(409, "Conflict", f'rollout "{name}" changed too often to act on; try again')


# -- following --------------------------------------------------------------------------------------


def follow(
    client: Client, ro: dict[str, Any], namespace: str, show: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Watch one rollout until it reaches a stopped phase; ``show`` every new state."""
    name = ro["metadata"]["name"]
    rv = str(ro["metadata"]["resourceVersion"])
    failures = 0
    while phase_of(ro) not in TERMINAL:
        try:
            for event in client.watch(
                PLURAL, namespace, field_selector=f"metadata.name={name}", resource_version=rv, timeout=300
            ):
                failures = 0
                if event["type"] == "DELETED":
                    raise ApiError(404, "NotFound", f'rollout "{name}" was deleted')
                ro = event["object"]
                rv = str(ro["metadata"]["resourceVersion"])
                show(ro)
                if phase_of(ro) in TERMINAL:
                    return ro
        except ApiError as exc:
            if exc.code == 410:  # fell behind the event history: start again from now
                ro = client.get(PLURAL, name, namespace)
                rv = str(ro["metadata"]["resourceVersion"])
                show(ro)
                continue
            if exc.code != 0 or failures >= 5:
                raise
            failures += 1
            time.sleep(min(2.0**failures, 10.0))
    return ro


# -- commands ---------------------------------------------------------------------------------------

LIST_COLUMNS = [
    Column("NAME", "name"),
    Column("INTENT", "intent"),
    Column("REVISION", "revision"),
    Column("STRATEGY", "strategy"),
    Column("PHASE", "phase"),
    Column("PROGRESS", "progress"),
    Column("FAILED", "failed"),
    Column("ETA", "eta"),
    Column("REASON", "reason"),
    Column("AGE", "age"),
]


def list_row(ro: dict[str, Any], now: float) -> dict[str, Any]:
    spec, status = ro.get("spec") or {}, _status(ro)
    counts = _counts(status)
    eta = status.get("etaAt")
    return {
        "namespace": ro["metadata"].get("namespace"),
        "name": ro["metadata"]["name"],
        "intent": intent_text(ro),
        "revision": (spec.get("intent") or {}).get("generation"),
        "strategy": (spec.get("strategy") or {}).get("type", "rolling"),
        "phase": phase_of(ro),
        "progress": f"{counts['succeeded']}/{sum(counts.values())}",
        "failed": counts["failed"],
        "eta": duration(float(eta) - now) if eta is not None else None,
        "reason": status.get("reason"),
        "age": age(ro["metadata"].get("creationTimestamp")),
    }


def register(app: typer.Typer) -> None:
    from fleetplane.cli.main import DEFAULT_NAMESPACE, err, fail, out, report, state

    ro_app = typer.Typer(help="Follow and steer rollouts of intent revisions.", no_args_is_help=True)
    app.add_typer(ro_app, name="rollout")

    @ro_app.command("list")
    def rollout_list(
        namespace: NamespaceOpt = None,
        all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A")] = False,
        output_format: OutputOpt = "table",
    ) -> None:
        """Rollouts with their phase, progress, failures and ETA."""
        if output_format not in ("table", "json", "yaml"):
            raise fail(f'unknown output format "{output_format}" (table, json, yaml)')
        try:
            with state.client() as client:
                items = client.list_all(PLURAL, None if all_namespaces else namespace or DEFAULT_NAMESPACE)
        except ApiError as exc:
            raise report(exc) from exc
        now = time.time()
        rows = [list_row(ro, now) for ro in items]
        if output_format != "table":
            out.print(dump(rows, output_format), markup=False, highlight=False)
        elif not rows:
            err.print("No rollouts found.")
        else:
            cols = ([Column("NAMESPACE", "namespace")] if all_namespaces else []) + LIST_COLUMNS
            out.print(table(rows, cols))

    @ro_app.command("status")
    def rollout_status(
        name: Annotated[str, typer.Argument(help="Rollout name, or KIND/INTENT for its newest rollout.")],
        namespace: NamespaceOpt = None,
        watch: Annotated[
            bool, typer.Option("--watch", "-w", help="Follow it until it stops (Completed, Failed, ...).")
        ] = False,
        output_format: OutputOpt = "table",
    ) -> None:
        """Phase, ETA, a progress bar per wave with its counts, and why it stopped.
        With -w, exits 0 when the rollout completes and 1 when it stops otherwise."""
        ns = namespace or DEFAULT_NAMESPACE
        if output_format not in ("table", "json", "yaml"):
            raise fail(f'unknown output format "{output_format}" (table, json, yaml)')
        try:
            with state.client() as client:
                ro = find_rollout(client, name, ns)
                if output_format != "table":
                    out.print(dump(ro, output_format), markup=False, highlight=False)
                    return
                if not watch:
                    if out.is_terminal:
                        out.print(rich_status(ro, time.time()))
                    else:
                        out.print(plain_status(ro, time.time()), markup=False, highlight=False)
                    return
                ro = _watch(client, ro, ns)
        except ApiError as exc:
            raise report(exc) from exc
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        if phase_of(ro) != "Completed":
            reason = _status(ro).get("reason")
            raise fail(
                f'rollout "{ro["metadata"]["name"]}" stopped: {phase_of(ro)}'
                + (f" ({reason})" if reason else "")
            )

    def _watch(client: Client, ro: dict[str, Any], ns: str) -> dict[str, Any]:
        if out.is_terminal:
            from rich.live import Live

            current = [ro]
            with Live(
                get_renderable=lambda: rich_status(current[0], time.time()),
                console=out,
                refresh_per_second=2,
                transient=False,
            ) as live:

                def show_live(new: dict[str, Any]) -> None:
                    current[0] = new
                    live.refresh()

                return follow(client, ro, ns, show_live)
        out.print(plain_status(ro, time.time()), markup=False, highlight=False)
        last = [progress_line(ro, time.time())]

        def show_plain(new: dict[str, Any]) -> None:
            line = progress_line(new, time.time())
            if line != last[0]:  # a quiet status write (ETA only) prints nothing
                stamp = datetime.now(UTC).strftime("%H:%M:%S")
                out.print(f"{stamp} {line}", markup=False, highlight=False)
                last[0] = line

        ro = follow(client, ro, ns, show_plain)
        out.print(plain_status(ro, time.time()), markup=False, highlight=False)
        return ro

    def make_action(action: str, doc: str) -> None:
        def command(
            name: Annotated[str, typer.Argument(help="Rollout name, or KIND/INTENT for its newest rollout.")],
            namespace: NamespaceOpt = None,
        ) -> None:
            try:
                with state.client() as client:
                    ro = request_action(client, action, name, namespace or DEFAULT_NAMESPACE)
            except ApiError as exc:
                raise (fail(exc.message) if exc.reason == "Refused" else report(exc)) from exc
            out.print(
                f"rollout/{ro['metadata']['name']}: {action} requested (phase {phase_of(ro)})",
                highlight=False,
            )

        command.__doc__ = doc
        ro_app.command(action)(command)

    make_action("pause", "Stop handing out the new revision; sites in flight finish.")
    make_action("resume", "Continue a paused rollout from where it was paused.")
    make_action("abort", "Stop for good: nothing more goes out, sites keep what they have.")
    make_action("promote", "End a canary soak or an A/B window now.")
    make_action("undo", "Roll back: the previous revision goes out by the same strategy.")
