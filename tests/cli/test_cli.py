"""The ``fleetplane`` CLI as a user types it, against a real server process.

Most tests share one server (module scope) and keep to their own object names and
label keys; the ones that need an empty fleet or a pristine config start their own.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.server import ServerProcess, free_port

CLI = [sys.executable, "-m", "fleetplane"]


# -- helpers ---------------------------------------------------------------------------------


def run(
    srv: ServerProcess,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """``fleetplane ARGS`` with the server's environment, plus/minus some variables."""
    full = {**srv.env(), "COLUMNS": "200"}
    for name in ("FLEETPLANE_KEY_FILE", "FLEETPLANE_CA_FILE", *drop):
        full.pop(name, None)
    full.update(env or {})
    return subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, text=True, env=full, timeout=60, check=False
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    assert "Traceback" not in result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """A failure the way a user should see it: non-zero exit, one line on stderr, no traceback."""
    assert result.returncode != 0, f"expected failure, got 0\nstdout: {result.stdout}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    return lines[0]


def names_in_table(stdout: str) -> list[str]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "empty table"
    assert lines[0].split()[0] == "NAME"
    return sorted(line.split()[0] for line in lines[1:])


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def vs_members(srv: ServerProcess, namespace: str) -> dict[str, list[str]]:
    data = json.loads(ok(run(srv, "get", "vs", "-n", namespace, "-o", "json")))
    return {vs["metadata"]["name"]: (vs.get("status") or {}).get("members", []) for vs in data["items"]}


def site_doc(name: str, labels: dict[str, str], display: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "fleetplane.io/v1",
        "kind": "Site",
        "metadata": {"name": name, "labels": labels},
    }
    if display:
        doc["spec"] = {"displayName": display}
    return doc


def vs_doc(name: str, namespace: str, selector: str) -> dict[str, Any]:
    return {
        "apiVersion": "fleetplane.io/v1",
        "kind": "VirtualSite",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": selector},
    }


def write_yaml(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("cli") / "data").start()
    yield proc
    proc.stop()


# -- get / apply -------------------------------------------------------------------------------


def test_get_sites_on_an_empty_fleet(server: ServerProcess) -> None:
    result = run(server, "get", "sites")
    assert ok(result) == ""
    assert "No sites found" in result.stderr


def test_apply_creates_then_unchanged_then_configured(srv: ServerProcess, tmp_path: Path) -> None:
    docs = [
        site_doc("ap-tokyo-1", {"aptest": "a", "tier": "gold"}),
        site_doc("ap-osaka-1", {"aptest": "b"}),
        vs_doc("ap-gold", "shop", "tier=gold,aptest"),
    ]
    manifest = write_yaml(tmp_path / "fleet.yaml", docs)
    assert ok(run(srv, "apply", "-f", str(manifest))).splitlines() == [
        "site/ap-tokyo-1 created",
        "site/ap-osaka-1 created",
        "virtualsite/ap-gold created",
    ]
    assert ok(run(srv, "apply", "-f", str(manifest))).splitlines() == [
        "site/ap-tokyo-1 unchanged",
        "site/ap-osaka-1 unchanged",
        "virtualsite/ap-gold unchanged",
    ]

    docs[1]["metadata"]["labels"]["aptest"] = "c"
    docs[2]["spec"]["selector"] = "aptest in (a,c)"
    write_yaml(manifest, docs)
    assert ok(run(srv, "apply", "-f", str(manifest))).splitlines() == [
        "site/ap-tokyo-1 unchanged",
        "site/ap-osaka-1 configured",
        "virtualsite/ap-gold configured",
    ]

    site = json.loads(ok(run(srv, "get", "site", "ap-osaka-1", "-o", "json")))
    assert site["metadata"]["labels"] == {"aptest": "c"}
    vs = json.loads(ok(run(srv, "get", "vs", "ap-gold", "-n", "shop", "-o", "json")))
    assert vs["metadata"]["namespace"] == "shop"
    assert vs["spec"]["selector"] == "aptest in (a,c)"
    assert wait_for(
        lambda: vs_members(srv, "shop").get("ap-gold") == ["ap-osaka-1", "ap-tokyo-1"], what="ap-gold members"
    )


def test_apply_keeps_what_others_set_and_removes_what_the_file_dropped(srv: ServerProcess) -> None:
    # A site onboarded with its token's label and a description, never applied from a file.
    with srv.client() as admin:
        admin.create("sites", {"metadata": {"name": "ap-onboarded", "labels": {"apenv": "prod"}},
                               "spec": {"description": "registered from host vm"}})  # fmt: skip
    doc = site_doc("ap-onboarded", {"apzone": "north", "apfn": "weld"})

    def apply() -> str:
        return ok(run(srv, "apply", "-f", "-", stdin=yaml.safe_dump(doc))).strip()

    def stored() -> dict[str, Any]:
        site: dict[str, Any] = json.loads(ok(run(srv, "get", "site", "ap-onboarded", "-o", "json")))
        return site

    assert apply() == "site/ap-onboarded configured"
    assert stored()["metadata"]["labels"] == {"apenv": "prod", "apzone": "north", "apfn": "weld"}
    assert stored()["spec"]["description"] == "registered from host vm"
    assert apply() == "site/ap-onboarded unchanged"
    # The file drops a label it set: it goes; the onboarding label stays. (Label keys of its
    # own: the module shares one server.)
    doc["metadata"]["labels"] = {"apzone": "north"}
    assert apply() == "site/ap-onboarded configured"
    assert stored()["metadata"]["labels"] == {"apenv": "prod", "apzone": "north"}


def test_apply_from_stdin_yaml_and_json(srv: ServerProcess) -> None:
    text = yaml.safe_dump_all(
        [site_doc("stdin-yaml-1", {"src": "yaml"}), site_doc("stdin-yaml-2", {"src": "yaml"})]
    )
    assert ok(run(srv, "apply", "-f", "-", stdin=text)).splitlines() == [
        "site/stdin-yaml-1 created",
        "site/stdin-yaml-2 created",
    ]

    one = json.dumps(site_doc("stdin-json-1", {"src": "json"}, display="From JSON"))
    assert ok(run(srv, "apply", "-f", "-", stdin=one)).strip() == "site/stdin-json-1 created"
    assert ok(run(srv, "apply", "-f", "-", stdin=one)).strip() == "site/stdin-json-1 unchanged"

    # A JSON List, as `get -o json` prints it, applies item by item.
    listed = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "List",
            "items": [site_doc("stdin-json-2", {"src": "json"}), vs_doc("stdin-json", "shop", "src=json")],
        }
    )
    assert ok(run(srv, "apply", "-f", "-", stdin=listed)).splitlines() == [
        "site/stdin-json-2 created",
        "virtualsite/stdin-json created",
    ]

    assert names_in_table(ok(run(srv, "get", "sites", "-l", "src=json"))) == ["stdin-json-1", "stdin-json-2"]
    site = json.loads(ok(run(srv, "get", "site", "stdin-json-1", "-o", "json")))
    assert site["spec"]["displayName"] == "From JSON"


def test_get_with_a_set_based_selector(srv: ServerProcess) -> None:
    docs = [
        site_doc("sel-tokyo-1", {"region": "jp-north", "seltest": "y"}),
        site_doc("sel-osaka-1", {"region": "jp-south", "seltest": "y"}),
        site_doc("sel-seoul-1", {"region": "kr-central", "seltest": "y"}),
        site_doc("sel-plain-1", {"seltest": "y"}),
    ]
    ok(run(srv, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs)))
    out = ok(run(srv, "get", "sites", "-l", "region in (jp-north,jp-south)"))
    assert names_in_table(out) == ["sel-osaka-1", "sel-tokyo-1"]
    out = ok(run(srv, "get", "sites", "-l", "seltest=y,region notin (jp-north,jp-south)"))
    assert names_in_table(out) == ["sel-plain-1", "sel-seoul-1"]
    out = ok(run(srv, "get", "sites", "-l", "seltest,!region", "-o", "name"))
    assert out.split() == ["site/sel-plain-1"]
    result = run(srv, "get", "sites", "-l", "region=nowhere")
    assert ok(result) == ""
    assert "No sites found" in result.stderr


def test_output_formats(srv: ServerProcess) -> None:
    docs = [
        site_doc("fmt-a", {"fmt": "yes", "colour": "blue"}, display="Format A"),
        site_doc("fmt-b", {"fmt": "yes"}),
    ]
    ok(run(srv, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs)))

    as_yaml = yaml.safe_load(ok(run(srv, "get", "sites", "-l", "fmt=yes", "-o", "yaml")))
    assert as_yaml["kind"] == "List"
    assert [i["metadata"]["name"] for i in as_yaml["items"]] == ["fmt-a", "fmt-b"]
    assert as_yaml["items"][0]["metadata"]["labels"] == {"fmt": "yes", "colour": "blue"}
    assert as_yaml["items"][0]["spec"]["displayName"] == "Format A"

    as_json = json.loads(ok(run(srv, "get", "sites", "-l", "fmt=yes", "-o", "json")))
    assert [i["metadata"]["name"] for i in as_json["items"]] == ["fmt-a", "fmt-b"]
    assert all(i["kind"] == "Site" and i["metadata"]["resourceVersion"] for i in as_json["items"])

    single = yaml.safe_load(ok(run(srv, "get", "site", "fmt-a", "-o", "yaml")))
    assert single["kind"] == "Site" and single["metadata"]["name"] == "fmt-a"

    table = ok(run(srv, "get", "sites", "-l", "fmt=yes"))
    assert "LABELS" not in table and "colour=blue" not in table
    wide = ok(run(srv, "get", "sites", "-l", "fmt=yes", "-o", "wide"))
    header, *rows = [line for line in wide.splitlines() if line.strip()]
    assert "LABELS" in header and "DISPLAY NAME" in header
    row_a = next(r for r in rows if r.startswith("fmt-a"))
    assert "colour=blue,fmt=yes" in row_a and "Format A" in row_a

    bad = one_line_error(run(srv, "get", "sites", "-o", "xml"))
    assert "unknown output format" in bad


def test_a_piped_table_keeps_each_row_on_one_line(srv: ServerProcess) -> None:
    # Piped, with no COLUMNS: no terminal width to fit, so nothing is folded (a script greps
    # a row and takes its first field).
    long_name = "pipe-" + "x" * 50
    labels = {f"label-{i}": "value-" + "y" * 20 for i in range(4)}
    ok(run(srv, "apply", "-f", "-", stdin=yaml.safe_dump(site_doc(long_name, labels, display="A Long Name"))))
    wide = ok(run(srv, "get", "sites", "-o", "wide", drop=("COLUMNS",)))
    row = next(line for line in wide.splitlines() if long_name in line)
    assert len(row) > 160 and row.split()[0] == long_name
    assert all(f"label-{i}=value-" + "y" * 20 in row for i in range(4))
    # A set width is still honoured.
    narrow = ok(run(srv, "get", "sites", "-o", "wide", env={"COLUMNS": "80"}))
    assert max(len(line) for line in narrow.splitlines()) <= 80


def test_get_virtual_sites_shows_members(srv: ServerProcess) -> None:
    docs = [site_doc(f"mem-{i}", {"memtest": "on"}) for i in range(3)] + [
        vs_doc("mem-all", "shop", "memtest=on"),
        vs_doc("mem-none", "shop", "memtest=off"),
    ]
    ok(run(srv, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs)))

    def counts() -> dict[str, str] | None:
        out = ok(run(srv, "get", "vs", "-n", "shop"))
        lines = [line.split() for line in out.splitlines() if line.strip()]
        header = lines[0]
        assert header[:2] == ["NAME", "SELECTOR"] and "MEMBERS" in header
        col = header.index("MEMBERS")
        found = {row[0]: row[col] for row in lines[1:]}
        return found if found.get("mem-all") == "3" else None

    found = wait_for(counts, what="mem-all to show 3 members")
    assert found["mem-none"] == "0"
    # Another namespace sees none of them.
    result = run(srv, "get", "vs", "-n", "empty-ns")
    assert ok(result) == "" and "No virtualsites found" in result.stderr


# -- label ---------------------------------------------------------------------------------------


def test_label_needs_overwrite_to_change_and_key_minus_removes(srv: ServerProcess) -> None:
    ok(run(srv, "apply", "-f", "-", stdin=yaml.safe_dump(site_doc("tokyo-1", {"region": "jp-north"}))))

    refused = run(srv, "label", "site", "tokyo-1", "region=jp-south")
    assert refused.returncode == 1
    line = one_line_error(refused)
    assert "region" in line and "--overwrite" in line
    assert json.loads(ok(run(srv, "get", "site", "tokyo-1", "-o", "json")))["metadata"]["labels"] == {
        "region": "jp-north"
    }

    assert (
        ok(run(srv, "label", "site", "tokyo-1", "region=jp-south", "--overwrite")).strip()
        == "site/tokyo-1 labeled"
    )
    # Adding a new key or setting the same value needs no --overwrite.
    ok(run(srv, "label", "site", "tokyo-1", "tier=gold", "region=jp-south"))
    labels = json.loads(ok(run(srv, "get", "site", "tokyo-1", "-o", "json")))["metadata"]["labels"]
    assert labels == {"region": "jp-south", "tier": "gold"}

    ok(run(srv, "label", "site", "tokyo-1", "tier-"))
    labels = json.loads(ok(run(srv, "get", "site", "tokyo-1", "-o", "json")))["metadata"]["labels"]
    assert labels == {"region": "jp-south"}

    assert "invalid label" in one_line_error(run(srv, "label", "site", "tokyo-1", "justakey"))
    assert "NotFound" in one_line_error(run(srv, "label", "site", "no-such-site", "a=b"))


def test_relabel_moves_a_site_between_virtual_sites(srv: ServerProcess) -> None:
    docs = [
        site_doc("mv-1", {"mvzone": "north"}),
        site_doc("mv-2", {"mvzone": "north"}),
        site_doc("mv-3", {"mvzone": "south"}),
        vs_doc("mv-north", "mvns", "mvzone=north"),
        vs_doc("mv-south", "mvns", "mvzone in (south)"),
        vs_doc("mv-any", "mvns", "mvzone"),
    ]
    ok(run(srv, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs)))
    before = {"mv-north": ["mv-1", "mv-2"], "mv-south": ["mv-3"], "mv-any": ["mv-1", "mv-2", "mv-3"]}
    wait_for(lambda: vs_members(srv, "mvns") == before, what="initial membership")

    ok(run(srv, "label", "site", "mv-1", "mvzone=south", "--overwrite"))
    after = {"mv-north": ["mv-2"], "mv-south": ["mv-1", "mv-3"], "mv-any": ["mv-1", "mv-2", "mv-3"]}
    wait_for(lambda: vs_members(srv, "mvns") == after, what="mv-1 to move north -> south")

    ok(run(srv, "label", "site", "mv-2", "mvzone-"))
    gone = {"mv-north": [], "mv-south": ["mv-1", "mv-3"], "mv-any": ["mv-1", "mv-3"]}
    wait_for(lambda: vs_members(srv, "mvns") == gone, what="mv-2 to leave every virtual site")

    status = json.loads(ok(run(srv, "get", "vs", "mv-south", "-n", "mvns", "-o", "json")))["status"]
    assert status["memberCount"] == 2 and status["selector"] == "mvzone in (south)"


# -- describe / delete / watch -----------------------------------------------------------------


def test_describe(srv: ServerProcess) -> None:
    docs = [site_doc("desc-1", {"desc": "yes"}, display="Describe Me"), vs_doc("desc-vs", "shop", "desc=yes")]
    ok(run(srv, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs)))
    out = ok(run(srv, "describe", "site", "desc-1"))
    assert "Name:" in out and "desc-1" in out
    assert "Kind:" in out and "Site" in out
    assert "desc=yes" in out and "displayName: Describe Me" in out
    wait_for(lambda: vs_members(srv, "shop").get("desc-vs") == ["desc-1"], what="desc-vs members")
    out = ok(run(srv, "describe", "vs", "desc-vs", "-n", "shop"))
    assert "Namespace:" in out and "shop" in out
    assert "memberCount: 1" in out and "- desc-1" in out
    assert "NotFound" in one_line_error(run(srv, "describe", "site", "no-such-site"))


def test_delete(srv: ServerProcess, tmp_path: Path) -> None:
    docs = [site_doc("del-1", {"del": "x"}), site_doc("del-2", {"del": "x"}), vs_doc("del-vs", "shop", "del")]
    manifest = write_yaml(tmp_path / "del.yaml", docs)
    ok(run(srv, "apply", "-f", str(manifest)))

    assert ok(run(srv, "delete", "site", "del-1")).strip() == 'site "del-1" deleted'
    assert "NotFound" in one_line_error(run(srv, "get", "site", "del-1"))
    # Deleting by file: what is gone already is an error, the rest are deleted.
    result = run(srv, "delete", "-f", str(manifest))
    assert result.returncode == 1
    assert 'site "del-2" deleted' in result.stdout and 'virtualsite "del-vs" deleted' in result.stdout
    assert "NotFound" in one_line_error(result) and "del-1" in result.stderr
    assert "No sites found" in run(srv, "get", "sites", "-l", "del").stderr
    assert "give a kind and names" in one_line_error(run(srv, "delete", "site"))


def _reader(stream: Any, lines: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)


def test_get_watch_prints_changes(srv: ServerProcess) -> None:
    ok(run(srv, "apply", "-f", "-", stdin=yaml.safe_dump(site_doc("watch-1", {"watchtest": "yes"}))))
    env = {**srv.env(), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [*CLI, "get", "sites", "-l", "watchtest", "--watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []

    def until(text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in s for s in seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"watch did not print {text!r}; got {seen!r}")
            try:
                seen.append(lines.get(timeout=left))
            except queue.Empty:
                continue

    try:
        until("watch-1")
        assert seen[0].split()[0] == "NAME"  # the header, once
        ok(run(srv, "apply", "-f", "-", stdin=yaml.safe_dump(site_doc("watch-2", {"watchtest": "yes"}))))
        until("watch-2")
        ok(run(srv, "delete", "site", "watch-1"))
        until("watch-1 (deleted)")
        # A site that stops matching the selector leaves the watch too.
        ok(run(srv, "label", "site", "watch-2", "watchtest-"))
        until("watch-2 (deleted)")
        assert proc.poll() is None, "watch ended on its own"
        assert sum(1 for s in seen if s.split() and s.split()[0] == "NAME") == 1
    finally:
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    assert "Traceback" not in stderr


# -- tenants and access keys ----------------------------------------------------------------------


def _printed_key(stdout: str) -> str:
    keys = [line.rsplit(" ", 1)[-1] for line in stdout.splitlines() if "(shown once)" in line]
    assert len(keys) == 1, stdout
    return keys[0]


def test_tenant_and_access_keys(srv: ServerProcess, tmp_path: Path) -> None:
    created = ok(run(srv, "tenants", "create", "acme"))
    assert created.splitlines()[0] == "tenant/acme created"
    acme_key = _printed_key(created)
    acme_file = tmp_path / "acme.key"
    acme_file.write_text(acme_key + "\n")

    # The new tenant sees its own, empty fleet; the default tenant's sites are not there.
    ok(run(srv, "apply", "-f", "-", stdin=yaml.safe_dump(site_doc("default-only", {}))))
    result = run(srv, "--key-file", str(acme_file), "get", "sites")
    assert ok(result) == "" and "No sites found" in result.stderr
    ok(
        run(
            srv,
            "--key-file",
            str(acme_file),
            "apply",
            "-f",
            "-",
            stdin=yaml.safe_dump(site_doc("acme-1", {"owner": "acme"})),
        )
    )
    assert names_in_table(ok(run(srv, "--key-file", str(acme_file), "get", "sites"))) == ["acme-1"]
    assert "acme-1" not in ok(run(srv, "get", "sites"))

    # The tenant admin mints a viewer key: it reads, and may not write.
    made = ok(run(srv, "--key-file", str(acme_file), "accesskeys", "create", "reader", "--role", "viewer"))
    assert made.splitlines()[0] == "accesskey/reader created"
    viewer_file = tmp_path / "viewer.key"
    viewer_file.write_text(_printed_key(made))
    assert names_in_table(ok(run(srv, "--key-file", str(viewer_file), "get", "sites"))) == ["acme-1"]
    denied = one_line_error(run(srv, "--key-file", str(viewer_file), "delete", "site", "acme-1"))
    assert "Forbidden" in denied
    # The key is shown once: what the server returns later holds no secret or hash.
    listed = json.loads(ok(run(srv, "--key-file", str(acme_file), "get", "accesskeys", "-o", "json")))
    reader = next(i for i in listed["items"] if i["metadata"]["name"] == "reader")
    assert "keyHash" not in json.dumps(reader) and _printed_key(made) not in json.dumps(listed)

    # Only the system key manages tenants; a duplicate is refused.
    assert "Forbidden" in one_line_error(run(srv, "--key-file", str(acme_file), "tenants", "create", "evil"))
    assert "AlreadyExists" in one_line_error(run(srv, "tenants", "create", "acme"))
    # A revoked or made-up key is refused in one line.
    bogus = tmp_path / "bogus.key"
    bogus.write_text("fpk_acme_reader_" + "0" * 64)
    assert "Unauthorized" in one_line_error(run(srv, "--key-file", str(bogus), "get", "sites"))


# -- error paths --------------------------------------------------------------------------------------


def test_error_unknown_kind(srv: ServerProcess) -> None:
    line = one_line_error(run(srv, "get", "spaceships"))
    assert 'resource type "spaceships"' in line
    line = one_line_error(run(srv, "apply", "-f", "-", stdin="kind: Spaceship\nmetadata: {name: x}\n"))
    assert "Spaceship" in line


def test_error_missing_object(srv: ServerProcess) -> None:
    line = one_line_error(run(srv, "get", "site", "does-not-exist"))
    assert "NotFound" in line and "does-not-exist" in line
    line = one_line_error(run(srv, "delete", "vs", "does-not-exist", "-n", "shop"))
    assert "NotFound" in line


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (
            {
                "kind": "Site",
                "metadata": {"name": "bad-lat"},
                "spec": {"coordinates": {"latitude": 123, "longitude": 0}},
            },
            "spec.coordinates.latitude",
        ),
        ({"kind": "Site", "metadata": {"name": "bad-field"}, "spec": {"colour": "red"}}, "spec.colour"),
        ({"kind": "Site", "metadata": {"name": "Bad_Name"}}, "metadata.name"),
        ({"kind": "Site", "metadata": {"name": "bad-label", "labels": {"a b": "c"}}}, "metadata.labels"),
        (
            {
                "kind": "VirtualSite",
                "metadata": {"name": "bad-sel", "namespace": "shop"},
                "spec": {"selector": "region in ("},
            },
            "spec.selector",
        ),
    ],
    ids=["out-of-range", "unknown-field", "bad-name", "bad-label-key", "bad-selector"],
)
def test_error_invalid_object_names_the_field(srv: ServerProcess, doc: dict[str, Any], field: str) -> None:
    line = one_line_error(run(srv, "apply", "-f", "-", stdin=json.dumps(doc)))
    assert "Invalid" in line and field in line, line


def test_error_bad_yaml_names_the_line(srv: ServerProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Site\nmetadata:\n  name: ok\n  labels: {a: b\n  other: [\n")
    line = one_line_error(run(srv, "apply", "-f", str(bad)))
    assert str(bad) in line and "line " in line
    bad.write_text("kind: Site\nmetadata:\n  name: x\n\tlabels: {}\n")
    line = one_line_error(run(srv, "apply", "-f", str(bad)))
    assert "line 4" in line
    not_object = one_line_error(run(srv, "apply", "-f", "-", stdin="- just\n- a list\n"))
    assert "document 1" in not_object
    missing = one_line_error(run(srv, "apply", "-f", str(tmp_path / "nope.yaml")))
    assert "cannot read" in missing


@pytest.mark.parametrize("selector", ["region in (", "a=b=c", "region in (a b)", "Bad Key=x", "x > 1"])
def test_error_bad_selector(srv: ServerProcess, selector: str) -> None:
    line = one_line_error(run(srv, "get", "sites", "-l", selector))
    assert "BadRequest" in line or "selector" in line.lower(), line


def test_error_unreachable_server(srv: ServerProcess) -> None:
    closed = f"https://127.0.0.1:{free_port()}"
    result = run(srv, "get", "sites", env={"FLEETPLANE_SERVER": closed})
    line = one_line_error(result)
    assert "cannot reach" in line and closed in line
    result = run(srv, "get", "sites", "--watch", env={"FLEETPLANE_SERVER": closed})
    assert closed in one_line_error(result)


def test_error_missing_config(srv: ServerProcess, tmp_path: Path) -> None:
    nowhere = {
        "FLEETPLANE_CONFIG": str(tmp_path / "no-such-config.yaml"),
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
    }
    line = one_line_error(run(srv, "get", "sites", env=nowhere))
    assert "no server configured" in line
    # A server but no key.
    line = one_line_error(run(srv, "get", "sites", env={**nowhere, "FLEETPLANE_SERVER": srv.url}))
    assert "no access key" in line
    line = one_line_error(
        run(
            srv,
            "--key-file",
            str(tmp_path / "missing.key"),
            "get",
            "sites",
            env={**nowhere, "FLEETPLANE_SERVER": srv.url},
        )
    )
    assert "cannot read access key file" in line
    broken = tmp_path / "broken.yaml"
    broken.write_text("server: [unclosed\n")
    line = one_line_error(run(srv, "get", "sites", env={"FLEETPLANE_CONFIG": str(broken)}))
    assert "not valid YAML" in line and "line 2" in line


# -- configuration precedence ------------------------------------------------------------------------


def test_config_precedence_flags_over_env_over_file(server: ServerProcess, tmp_path: Path) -> None:
    # The server's first start wrote the CLI config: the CLI works with nothing else set.
    config = yaml.safe_load(server.config.read_text())
    assert config["server"] == server.url
    assert Path(config["keyFile"]).read_text().strip() == server.admin_key
    assert oct(server.config.stat().st_mode & 0o777) == "0o600"
    ok(run(server, "apply", "-f", "-", stdin=yaml.safe_dump(site_doc("only-in-default", {}))))
    assert names_in_table(ok(run(server, "get", "sites"))) == ["only-in-default"]

    # FLEETPLANE_SERVER beats the file...
    closed = f"https://127.0.0.1:{free_port()}"
    assert closed in one_line_error(run(server, "get", "sites", env={"FLEETPLANE_SERVER": closed}))
    # ...and --server beats FLEETPLANE_SERVER.
    assert names_in_table(
        ok(run(server, "--server", server.url, "get", "sites", env={"FLEETPLANE_SERVER": closed}))
    ) == ["only-in-default"]
    assert closed in one_line_error(run(server, "--server", closed, "get", "sites"))

    # Keys: a second tenant's key tells which key was used.
    other_file = tmp_path / "other.key"
    other_file.write_text(_printed_key(ok(run(server, "tenants", "create", "other"))))
    admin_file = Path(config["keyFile"])
    # FLEETPLANE_KEY_FILE beats the file's keyFile: the other tenant's empty fleet.
    as_other = run(server, "get", "sites", env={"FLEETPLANE_KEY_FILE": str(other_file)})
    assert ok(as_other) == "" and "No sites found" in as_other.stderr
    # --key-file beats FLEETPLANE_KEY_FILE.
    out = ok(
        run(
            server,
            "--key-file",
            str(admin_file),
            "get",
            "sites",
            env={"FLEETPLANE_KEY_FILE": str(other_file)},
        )
    )
    assert names_in_table(out) == ["only-in-default"]
    # An explicit --config replaces FLEETPLANE_CONFIG.
    alt = tmp_path / "alt-config.yaml"
    alt.write_text(
        yaml.safe_dump({"server": server.url, "keyFile": str(other_file), "caFile": server.ca_file})
    )
    as_other = run(server, "--config", str(alt), "get", "sites")
    assert ok(as_other) == "" and "No sites found" in as_other.stderr
    # A second server on another data dir leaves this config alone.
    second = ServerProcess(tmp_path / "second", port=free_port())
    second.config = server.config
    second.start()
    try:
        assert yaml.safe_load(server.config.read_text())["server"] == server.url
    finally:
        second.stop()


def test_version_reports_client_and_unreachable_server(srv: ServerProcess) -> None:
    out = ok(run(srv, "version"))
    assert out.splitlines()[0].startswith("client: v") and "server: v" in out
    closed = f"https://127.0.0.1:{free_port()}"
    out = ok(run(srv, "version", env={"FLEETPLANE_SERVER": closed}))
    assert "server: unreachable" in out


def test_error_malformed_server_url(srv: ServerProcess) -> None:
    line = one_line_error(run(srv, "get", "sites", env={"FLEETPLANE_SERVER": "not a url"}))
    assert line.startswith("error:")
