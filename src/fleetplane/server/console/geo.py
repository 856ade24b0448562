"""The world map: the packaged Natural Earth land TopoJSON, projected once into an SVG path.

Equirectangular projection in a 360 x 180 box (x = longitude + 180, y = 90 - latitude):
the browser places site dots with the same two formulas, so no projection code runs there.
"""

from __future__ import annotations

import functools
import itertools
import json
from importlib import resources
from typing import Any

WIDTH, HEIGHT = 360, 180


def project(longitude: float, latitude: float) -> tuple[float, float]:
    return longitude + 180.0, 90.0 - latitude


def _decode_arcs(topo: dict[str, Any]) -> list[list[tuple[float, float]]]:
    """Quantized, delta-encoded TopoJSON arcs -> absolute (longitude, latitude) points."""
    (sx, sy), (tx, ty) = topo["transform"]["scale"], topo["transform"]["translate"]
    arcs = []
    for arc in topo["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x, y = x + dx, y + dy
            points.append((x * sx + tx, y * sy + ty))
        arcs.append(points)
    return arcs


def _ring(arcs: list[list[tuple[float, float]]], refs: list[int]) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    for ref in refs:
        # A negative reference is the one's complement of an arc walked backwards.
        arc = arcs[ref] if ref >= 0 else arcs[~ref][::-1]
        points.extend(arc[1:] if points else arc)
    return points


def _polygons(geometry: dict[str, Any]) -> list[list[list[int]]]:
    if geometry["type"] == "Polygon":
        return [geometry["arcs"]]
    if geometry["type"] == "MultiPolygon":
        return list(geometry["arcs"])
    if geometry["type"] == "GeometryCollection":
        return [p for g in geometry["geometries"] for p in _polygons(g)]
    return []


def svg_path(topo: dict[str, Any], object_name: str) -> str:
    arcs = _decode_arcs(topo)
    parts = []
    for polygon in _polygons(topo["objects"][object_name]):
        for refs in polygon:
            ring = _ring(arcs, refs)
            xy = [project(lon, lat) for lon, lat in ring]
            if len(xy) < 3:
                continue
            # A ring that crosses the antimeridian (Chukotka, Fiji, Antarctica) would draw a
            # line across the whole map: start a new subpath where it jumps from one edge to
            # the other; the fill closes each piece along that edge.
            pieces: list[list[tuple[float, float]]] = [[xy[0]]]
            for prev, point in itertools.pairwise(xy):
                if abs(point[0] - prev[0]) > WIDTH / 2:
                    pieces.append([])
                pieces[-1].append(point)
            for piece in pieces:
                if len(piece) < 2:
                    continue
                head = f"M{piece[0][0]:.1f},{piece[0][1]:.1f}"
                parts.append(head + "L" + " ".join(f"{x:.1f},{y:.1f}" for x, y in piece[1:]) + "Z")
    return "".join(parts)


@functools.cache
def land_path() -> str:
    """The land of the world as one SVG path in the 360 x 180 box (computed once)."""
    data = resources.files("fleetplane.server.console").joinpath("static/data/land-110m.json").read_text()
    return svg_path(json.loads(data), "land")
