"""Pure parts of the console: the world map's projection and the site view's selection."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from fleetplane.core.selectors import parse_selector
from fleetplane.core.store import open_store
from fleetplane.core.watch import WatchHub
from fleetplane.server.console import geo
from fleetplane.server.console.view import ConsoleView


def _subpaths(path: str) -> list[list[tuple[float, float]]]:
    out = []
    for piece in path.split("M")[1:]:
        numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", piece)]
        out.append(list(zip(numbers[::2], numbers[1::2], strict=True)))
    return out


def test_projection_matches_the_dots() -> None:
    assert geo.project(0, 0) == (180, 90)
    assert geo.project(-180, 90) == (0, 0)
    assert geo.project(151.2, -33.9) == (331.2, 123.9)


def test_a_ring_over_the_antimeridian_is_cut_not_drawn_across_the_map() -> None:
    # One ring: 170E -> 170W (across 180) -> 170W further north -> 170E -> back; quantized
    # with scale 1 and translate -180/-90, delta-encoded as TopoJSON arcs are.
    topo = {
        "transform": {"scale": [1, 1], "translate": [-180, -90]},
        "arcs": [[[350, 150], [-340, 0], [0, 5], [340, 0], [0, -5]]],
        "objects": {"land": {"type": "Polygon", "arcs": [[0]]}},
    }
    pieces = _subpaths(geo.svg_path(topo, "land"))
    assert [[x for x, _ in p] for p in pieces] == [[10.0, 10.0], [350.0, 350.0]]  # one piece per side
    for piece in pieces:
        xs = [x for x, _ in piece]
        assert max(xs) - min(xs) <= geo.WIDTH / 2


def test_the_packaged_land_has_no_line_across_the_world() -> None:
    pieces = _subpaths(geo.land_path())
    assert len(pieces) > 100  # continents and islands of Natural Earth 1:110m
    for piece in pieces:
        for (x1, _), (x2, _) in itertools.pairwise(piece):
            assert abs(x2 - x1) <= geo.WIDTH / 2
        assert all(0 <= x <= geo.WIDTH and 0 <= y <= geo.HEIGHT for x, y in piece)


def test_the_view_pages_by_name_and_selects_with_the_label_index(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    view = ConsoleView(store, WatchHub(store))
    for i, region in enumerate(("eu", "us", "eu", "jp", "eu")):
        site = {
            "kind": "Site",
            "metadata": {"name": f"s{4 - i}", "labels": {"region": region}},
            "spec": {"coordinates": {"latitude": 1.23456, "longitude": -7.891}},
        }
        view.set("t", site)
    assert view.names("t") == ["s0", "s1", "s2", "s3", "s4"]
    assert view.names("t", parse_selector("region=eu")) == ["s0", "s2", "s4"]
    assert view.names("t", parse_selector("region notin (eu,jp)")) == ["s3"]
    assert (view.rows["t"]["s0"].lat, view.rows["t"]["s0"].lon) == (1.23, -7.89)
    view.remove("t", "s2")
    assert view.names("t", parse_selector("region=eu")) == ["s0", "s4"]
    assert view.names("other") == []
    store.close()
