#!/usr/bin/env python3
"""Makes world.json, the console map's land outlines, from Natural Earth's 1:110m land polygons
(public domain) as TopoJSON in the npm package world-atlas 2.0.2 (`npm pack world-atlas@2.0.2`,
file land-110m.json). Run once by hand: nothing downloads at build time, and the binary embeds
the committed output.

    python3 world.py package/land-110m.json > world.json

The projection is equirectangular: x = longitude + 180, y = 90 - latitude, so the SVG's viewBox
is 0 0 360 180 and the console places a sighting with the same two sums. Points are rounded to
a tenth of a degree and repeats dropped, which keeps the file small and the 110m shapes intact.
"""
import json
import sys


def arcs_of(topo):
    sx, sy = topo["transform"]["scale"]
    tx, ty = topo["transform"]["translate"]
    out = []
    for arc in topo["arcs"]:
        x = y = 0
        pts = []
        for dx, dy in arc:
            x += dx
            y += dy
            pts.append((x * sx + tx, y * sy + ty))
        out.append(pts)
    return out


def ring(arcs, refs):
    pts = []
    for r in refs:
        a = arcs[r] if r >= 0 else list(reversed(arcs[~r]))
        pts.extend(a if not pts else a[1:])
    return pts


def unwrap(pts):
    """Longitudes made continuous: no step of more than 180 degrees between two points."""
    out = []
    offset = 0
    for lon, lat in pts:
        if out:
            prev = out[-1][0]
            while lon + offset - prev > 180:
                offset -= 360
            while lon + offset - prev < -180:
                offset += 360
        out.append((lon + offset, lat))
    return out


def main(path):
    topo = json.load(open(path))
    arcs = arcs_of(topo)
    d = []
    for geom in topo["objects"]["land"]["geometries"]:
        polys = geom["arcs"] if geom["type"] == "MultiPolygon" else [geom["arcs"]]
        for poly in polys:
            for refs in poly:
                pts = unwrap(ring(arcs, refs))
                lons = [lon for lon, _ in pts]
                # A ring across the antimeridian (Chukotka, Fiji) is drawn unwrapped, past one
                # edge of the map, and once more shifted onto the other edge.
                shifts = [0] if min(lons) >= -180 and max(lons) <= 180 else [0, -360 if max(lons) > 180 else 360]
                for shift in shifts:
                    last = None
                    cmds = []
                    for lon, lat in pts:
                        p = (round(lon + shift + 180, 1), round(90 - lat, 1))
                        if p != last:
                            cmds.append("%g %g" % p)
                            last = p
                    if len(cmds) >= 3:
                        d.append("M" + "L".join(cmds) + "Z")
    json.dump(
        {
            "source": "Natural Earth 1:110m land (public domain), via world-atlas 2.0.2",
            "projection": "equirectangular: x = lon + 180, y = 90 - lat",
            "view_box": [0, 0, 360, 180],
            "land": "".join(d),
        },
        sys.stdout,
        separators=(",", ":"),
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
