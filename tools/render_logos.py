#!/usr/bin/env python3
"""Regenerate the kernel logo PNGs from their SVGs: nixkernel/resources/logo-svg.svg (Nix
kernels: the Nix snowflake with a Python badge) and nixkernel/resources/venv/logo-svg.svg
(virtualenv kernels: Python alone).

Dev script (stdlib only): renders each SVG with headless Chromium at each
size and checks the result is a transparent RGBA PNG of the right size.

    python tools/render_logos.py [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import html
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "nixkernel" / "resources"
#: Each resources directory holds a logo-svg.svg and the PNGs rendered from it.
LOGO_DIRS = (RESOURCES, RESOURCES / "venv")
SIZES = (64, 32)

PAGE = """<!DOCTYPE html>
<html><head><style>
html, body {{ margin: 0; padding: 0; background: transparent; overflow: hidden; }}
img {{ display: block; width: {size}px; height: {size}px; }}
</style></head>
<body><img src="{src}" width="{size}" height="{size}"></body></html>
"""


def find_chromium(explicit: str | None) -> str:
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("render_logos: no chromium found (use --chromium PATH)")


def png_header(path: pathlib.Path) -> tuple[int, int, int, int]:
    """Return (width, height, bit_depth, colour_type) from the IHDR chunk."""
    data = path.read_bytes()[:33]
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, colour


def render(
    chromium: str, svg: pathlib.Path, size: int, out: pathlib.Path, tmp: pathlib.Path
) -> None:
    page = tmp / f"logo-{size}.html"
    page.write_text(PAGE.format(size=size, src=html.escape(svg.as_uri())), encoding="utf-8")
    shot = tmp / f"logo-{size}.png"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={tmp / 'profile'}",
        f"--screenshot={shot}",
        f"--window-size={size},{size}",
        "--default-background-color=00000000",
        page.as_uri(),
    ]
    subprocess.run(
        cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120
    )
    width, height, _depth, colour = png_header(shot)
    if (width, height) != (size, size):
        raise SystemExit(f"render_logos: got {width}x{height} for {size}x{size}")
    if colour != 6:  # 6 = truecolour with alpha
        raise SystemExit(f"render_logos: {shot} is not RGBA (colour type {colour})")
    shutil.copyfile(shot, out)
    print(f"wrote {out.relative_to(ROOT)} ({size}x{size} RGBA)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", help="path to a chromium/chrome binary")
    args = parser.parse_args()
    chromium = find_chromium(args.chromium)
    with tempfile.TemporaryDirectory(prefix="nixkernel-logos-") as tmpdir:
        tmp = pathlib.Path(tmpdir)
        for directory in LOGO_DIRS:
            for size in SIZES:
                out = directory / f"logo-{size}x{size}.png"
                render(chromium, directory / "logo-svg.svg", size, out, tmp)


if __name__ == "__main__":
    main()
