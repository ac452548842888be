"""The app as a person uses it: ``python -m dpt_mlx.app`` serving tiny local checkpoints on a free port,
driven in headless Chromium (Debian's /usr/bin/chromium through Playwright; no browser download).

A photo dropped on the page gives the photo and depth side by side, a rendered 3D mesh, the camera
used, a measurement between two clicked points equal to the back-projection of the command line's
depth, and downloads byte for byte equal to what ``dpt-mlx`` writes for the same photo and checkpoint.
Bad checkpoints and unreadable photos are one line on the page; relative models get a labelled relief
preview and no 3D downloads; segmentation models a class map, overlay and legend. Neither the server
nor the page reaches anything but 127.0.0.1 (the server runs with a socket guard that records and
refuses every other address; the page's requests are watched). Screenshots go to tmp_path.

Nothing can hang: every wait has a timeout, the server is killed in a finally, the test has a limit.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from depth3d import checkpoints_3d
from PIL import Image

from dpt_mlx.cli.predict import main as predict

CHROMIUM = os.environ.get("DPT_MLX_CHROMIUM", "/usr/bin/chromium")  # Debian's; .ci/run installs it
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 90_000  # the longest any page element may take (a model run on 2 shared cores)
SERVE_SECONDS = 120  # the server's start
KINDS = ("png", "png16", "npy", "exr", "ply", "glb")
SUFFIX = {
    "png": "_depth.png",
    "png16": "_depth16.png",
    "npy": "_depth.npy",
    "exr": "_depth.exr",
    "ply": "_points.ply",
    "glb": "_mesh.glb",
}

# Imported by the server process (PYTHONPATH): every connection or name lookup that is not this
# machine's loopback is written to DPT_MLX_NET_LOG and refused.
GUARD = """
import ipaddress, os, socket

_LOG = os.environ["DPT_MLX_NET_LOG"]


def _local(host):
    if host in (None, "", "localhost", b"localhost"):
        return True
    if isinstance(host, bytes):
        host = host.decode()
    try:
        address = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _refuse(what):
    with open(_LOG, "a") as f:
        f.write(what + "\\n")
    raise OSError(f"network access refused by the test: {what}")


_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _refuse(f"connect {address!r}")
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _refuse(f"connect {address!r}")
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if not _local(host):
        _refuse(f"resolve {host!r}")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
"""

pytestmark = [pytest.mark.timeout(600), pytest.mark.linux]  # CI's platform; never skipped there


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import transformers
    from model_configs import tipsv2_reference

    from dpt_mlx.processing.tipsv2_processor import Tipsv2DptImageProcessor

    made = checkpoints_3d(tmp_path_factory.mktemp("app-ckpt"), photo_size=(240, 180))
    made["dense"] = made["photo"].parent / "dense"  # TIPSv2-DPT: depth, normals and classes
    tipsv2_reference(transformers.Tipsv2DptForDensePrediction, seed=2).save_pretrained(made["dense"])
    Tipsv2DptImageProcessor(size={"height": 56, "width": 56}).save_pretrained(made["dense"])
    return made


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _guard(tmp_path: Path) -> tuple[dict, Path]:
    """The server's environment with the socket guard, and the file it records attempts in."""
    folder = tmp_path / "guard"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "network.log"
    log.touch()
    env = dict(os.environ, DPT_MLX_NET_LOG=str(log), PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH")) if p)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    return env, log


def test_the_guard_records_and_refuses_the_internet(tmp_path):
    env, log = _guard(tmp_path)
    probe = (
        "import socket, urllib.request\n"
        "try:\n    urllib.request.urlopen('http://example.com', timeout=5)\nexcept OSError as e:\n    print(e)\n"
        "s = socket.socket(); s.settimeout(1)\n"
        "try:\n    s.connect(('93.184.216.34', 80))\nexcept OSError as e:\n    print(e)\n"
        "socket.getaddrinfo('127.0.0.1', 80)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert log.read_text().splitlines() == ["resolve 'example.com'", "connect ('93.184.216.34', 80)"]


@contextmanager
def serving(model: Path, out_dir: Path, env: dict, log: Path):
    """``python -m dpt_mlx.app`` on a free port until the block ends; its URL."""
    port = _free_port()
    command = [sys.executable, "-m", "dpt_mlx.app", "--model", str(model), "--port", str(port), "-d", str(out_dir)]
    with open(log, "w") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVE_SECONDS
        while True:
            if server.poll() is not None:
                pytest.fail(f"the app exited with {server.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not serve {url} within {SERVE_SECONDS} s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, server
    finally:
        if server.poll() is None:
            server.terminate()  # SIGTERM: the app's own way out
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
                server.wait(timeout=20)


def _status(page, wanted: str, before: str) -> str:
    """The status box once it has changed from ``before`` and shows ``wanted`` (or an error line)."""
    page.wait_for_function(
        "([wanted, before]) => { const t = document.querySelector('#status textarea');"
        " return t && t.value !== before && (t.value.includes(wanted) || t.value.startsWith('error:')); }",
        arg=[wanted, before],
        timeout=WAIT_MS,
    )
    return page.locator("#status textarea").input_value()


def _upload(page, path: Path) -> str:
    """Clear the photos box (a drop adds to what is there) and drop ``path`` on it; the status line before."""
    before = page.locator("#status textarea").input_value()
    clear = page.locator("#photos button[aria-label=Clear]")
    if clear.count():
        clear.click()
        page.locator("#photos tr.file").first.wait_for(state="detached", timeout=WAIT_MS)
    page.locator("#photos input[type=file]").set_input_files(str(path))
    return before


def _shown(page, selector: str) -> bool:
    """Whether the element is on the page for a person to see: displayed, and more than a pixel in size
    (a component kept in the page but visually hidden is not)."""
    box = page.locator(selector).bounding_box() if page.locator(selector).is_visible() else None
    return box is not None and box["width"] > 1 and box["height"] > 1


def _images_loaded(page, selector: str, count: int) -> None:
    page.wait_for_function(
        "([sel, n]) => { const imgs = [...document.querySelectorAll(sel)];"
        " return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0); }",
        arg=[selector, count],
        timeout=WAIT_MS,
    )


def _canvas_shows_something(page, path: Path) -> None:
    """The 3D viewer's canvas, screenshotted until it is more than its clear colour (the mesh is drawn)."""
    canvas = page.locator("#view3d canvas")
    canvas.wait_for(state="visible", timeout=WAIT_MS)
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        canvas.screenshot(path=str(path), timeout=WAIT_MS)
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        if pixels.std(axis=(0, 1)).max() > 20:  # a textured mesh, not a flat background
            return
        if time.monotonic() > deadline:
            pytest.fail("the 3D viewer stayed blank")
        time.sleep(1)


def _downloads(page, folder: Path) -> dict[str, bytes]:
    """Click every download link of the page, as a person would; file name -> bytes."""
    folder.mkdir()
    links = page.locator("#downloads a[download]")
    got = {}
    for i in range(links.count()):
        with page.expect_download(timeout=WAIT_MS) as download:
            links.nth(i).click()
        name = download.value.suggested_filename
        download.value.save_as(str(folder / name))
        got[name] = (folder / name).read_bytes()
    return got


# Where the photo is drawn inside its <img> box (CSS object-fit: contain, or scale-down, which never
# enlarges it), in page pixels: [left, top, width, height, natural width, natural height].
PHOTO_RECT = """() => {
    const i = document.querySelector('#measure img'), r = i.getBoundingClientRect();
    const fit = getComputedStyle(i).objectFit;
    let s = Math.min(r.width / i.naturalWidth, r.height / i.naturalHeight);
    if (fit === 'scale-down') s = Math.min(1, s);
    if (fit === 'none') s = 1;
    const w = i.naturalWidth * s, h = i.naturalHeight * s;
    return [r.left + (r.width - w) / 2, r.top + (r.height - h) / 2, w, h, i.naturalWidth, i.naturalHeight];
}"""


def _click(page, fx: float, fy: float) -> tuple[int, int]:
    """Click the measuring photo at fractions (fx, fy) of the photo as drawn, then wait until the photo
    with the marks has replaced it; the photo pixel aimed at."""
    old = page.locator("#measure img").get_attribute("src")
    left, top, width, height, natural_w, natural_h = page.evaluate(PHOTO_RECT)
    page.mouse.click(left + fx * width, top + fy * height)
    page.wait_for_function(
        "([old]) => { const i = document.querySelector('#measure img');"
        " return i && i.getAttribute('src') !== old && i.complete && i.naturalWidth > 0; }",
        arg=[old],
        timeout=WAIT_MS,
    )
    return int(fx * natural_w), int(fy * natural_h)


def _open(browser, url: str, outside: list) -> object:
    """A new page on the app; every request it makes that leaves 127.0.0.1 is refused and listed in ``outside``."""
    page = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    page.set_default_timeout(WAIT_MS)
    local = re.compile(r"^(https?|wss?)://127\.0\.0\.1:\d+/|^(data|blob):")

    def watch(route):
        if local.match(route.request.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", watch)
    page.goto(url, timeout=WAIT_MS)
    page.locator("#status textarea").wait_for(state="attached", timeout=WAIT_MS)
    return page


@pytest.mark.timeout(600)
def test_the_app_in_a_browser(ckpt, tmp_path):
    from playwright.sync_api import sync_playwright

    assert os.access(CHROMIUM, os.X_OK), f"no {CHROMIUM}: apt-get install chromium (or set DPT_MLX_CHROMIUM)"
    cli = tmp_path / "cli"
    code = predict(
        ["--model", str(ckpt["metric"]), "--image", str(ckpt["photo"]), "--format", ",".join(KINDS), "-d", str(cli)]
    )
    assert code == 0
    depth = np.load(cli / "photo_depth.npy")
    h, w = depth.shape
    fx = (w / 2) / math.tan(math.radians(30))  # the default camera: no EXIF, a 60 degree field of view

    env, network = _guard(tmp_path)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    outside = []

    with serving(ckpt["metric"], tmp_path / "app", env, tmp_path / "server.log") as (url, server):
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS, timeout=WAIT_MS
            )
            try:
                page = _open(browser, url, outside)

                # a metric checkpoint and a photo: depth, 3D, camera, measuring, downloads
                before = _upload(page, ckpt["photo"])
                line = _status(page, "done", before)
                assert line == f"1 photo done with {ckpt['metric']} (metric depth in metres (larger = farther))"
                _images_loaded(page, "#slider img", 2)
                _canvas_shows_something(page, shots / "view3d.png")
                camera = page.locator("#camera").inner_text()
                assert f"fx = fy = {fx:.6g} px" in camera and "default (60° horizontal field of view)" in camera
                assert "horizontal field of view 60°" in camera
                page.screenshot(path=str(shots / "app_metric.png"), full_page=True)

                _images_loaded(page, "#measure img", 1)
                a = _click(page, 0.3, 0.35)
                page.wait_for_function(
                    "() => document.querySelector('#distance textarea, #distance input').value.includes('second')"
                )
                b = _click(page, 0.75, 0.8)
                page.wait_for_function(
                    "() => document.querySelector('#distance textarea, #distance input').value.includes(' m between')"
                )
                text = page.locator("#distance textarea, #distance input").first.input_value()
                found = re.match(
                    r"([\d.]+) m between A \((\d+), (\d+)\) at ([\d.]+) m and B \((\d+), (\d+)\) at ([\d.]+) m", text
                )
                assert found, text
                shown_m, za, zb = float(found.group(1)), float(found.group(4)), float(found.group(7))
                pa, pb = (int(found.group(2)), int(found.group(3))), (int(found.group(5)), int(found.group(6)))
                assert za == pytest.approx(depth[pa[1], pa[0]], abs=6e-4)  # the depths of those pixels, in mm
                assert zb == pytest.approx(depth[pb[1], pb[0]], abs=6e-4)
                for clicked, reported in ((a, pa), (b, pb)):  # where the person clicked, to a pixel
                    assert abs(clicked[0] - reported[0]) <= 2 and abs(clicked[1] - reported[1]) <= 2
                points = [
                    np.array([(x + 0.5 - w / 2) * depth[y, x] / fx, (y + 0.5 - h / 2) * depth[y, x] / fx, depth[y, x]])
                    for x, y in (pa, pb)
                ]
                assert shown_m == pytest.approx(float(np.linalg.norm(points[0] - points[1])), abs=6e-4)  # to the mm
                page.screenshot(path=str(shots / "app_measure.png"), full_page=True)

                files = _downloads(page, tmp_path / "downloads")
                assert sorted(files) == sorted(f"photo{SUFFIX[k]}" for k in KINDS)
                for name, data in files.items():
                    assert data == (cli / name).read_bytes(), f"{name} differs from the command line's"

                # problems are one line on the page
                page.locator("#checkpoint textarea, #checkpoint input").first.fill(str(tmp_path / "no-such-model"))
                before = page.locator("#status textarea").input_value()
                page.locator("#run").click()
                line = _status(page, "error:", before)
                assert line.startswith("error: cannot load") and "\n" not in line and "Traceback" not in line
                page.locator("#checkpoint textarea, #checkpoint input").first.fill(str(ckpt["metric"]))
                before = _upload(page, broken)
                line = _status(page, "error:", before)
                assert line.startswith("error: ") and "broken.jpg" in line and "\n" not in line, line
                assert "Traceback" not in line and str(broken.parent) not in line
                page.screenshot(path=str(shots / "app_error.png"), full_page=True)

                # a relative checkpoint: a labelled relief, no 3D downloads, no measuring
                page.locator("#checkpoint textarea, #checkpoint input").first.fill(str(ckpt["relative"]))
                before = _upload(page, ckpt["photo"])
                line = _status(page, "done", before)
                assert "relative inverse depth" in line
                _canvas_shows_something(page, shots / "relief.png")
                assert "Relief preview" in page.locator("#view3d").inner_text()
                names = sorted(a.get_attribute("download") for a in page.locator("#downloads a[download]").all())
                assert names == ["photo_depth.exr", "photo_depth.npy", "photo_depth.png", "photo_depth16.png"]
                assert not _shown(page, "#measure")
                assert "no point cloud, mesh or measurements" in page.locator("#camera").inner_text()
                page.screenshot(path=str(shots / "app_relative.png"), full_page=True)

                # a segmentation checkpoint: class map, overlay, legend
                page.locator("#checkpoint textarea, #checkpoint input").first.fill(str(ckpt["seg"]))
                before = _upload(page, ckpt["photo"])
                line = _status(page, "done", before)
                assert "segmentation" in line
                _images_loaded(page, "#classes img", 1)
                _images_loaded(page, "#overlay img", 1)
                legend = page.locator("#legend").inner_text()
                seg_cli = tmp_path / "seg-cli"
                code = predict(
                    [
                        "--model",
                        str(ckpt["seg"]),
                        "--image",
                        str(ckpt["photo"]),
                        "--overlay",
                        "-d",
                        str(seg_cli),
                        "--format",
                        "png,npy",
                    ]
                )
                assert code == 0
                classes = np.load(seg_cli / "photo_seg.npy")
                assert len(np.unique(classes)) == 3  # the legend has something to tell
                assert not _shown(page, "#view3d") and not _shown(page, "#measure")
                for i in np.unique(classes):
                    name = {0: "wall", 1: "cup", 2: "table"}[int(i)]
                    share = (classes == i).mean() * 100
                    assert f"{name} ({i}): {share:.1f}%" in legend
                files = _downloads(page, tmp_path / "seg-downloads")
                assert sorted(files) == ["photo_seg.npy", "photo_seg.png", "photo_seg_overlay.png"]
                for name, data in files.items():
                    assert data == (seg_cli / name).read_bytes(), name
                page.screenshot(path=str(shots / "app_segmentation.png"), full_page=True)

                # a dense checkpoint: depth with its mesh and measuring, the surface normals, the class map
                page.close()  # a fresh page: Chromium lets one page start only 20 downloads
                page = _open(browser, url, outside)
                page.locator("#checkpoint textarea, #checkpoint input").first.fill(str(ckpt["dense"]))
                before = _upload(page, ckpt["photo"])
                line = _status(page, "done", before)
                assert "metres" in line and "surface normals and segmentation" in line, line
                _images_loaded(page, "#normals img", 1)
                _images_loaded(page, "#classes img", 1)
                assert _shown(page, "#measure") and "Photo | depth" in page.locator("#slider").inner_text()
                _canvas_shows_something(page, shots / "dense_mesh.png")
                dense_cli = tmp_path / "dense-cli"
                formats = "png,png16,npy,exr,ply,glb"
                code = predict(
                    ["--model", str(ckpt["dense"]), "--image", str(ckpt["photo"]), "--overlay", "-f", formats]
                    + ["-d", str(dense_cli)]
                )
                assert code == 0
                files = _downloads(page, tmp_path / "dense-downloads")
                assert sorted(files) == sorted(p.name for p in dense_cli.iterdir())
                assert {"photo_normals.png", "photo_mesh.glb", "photo_seg.png"} <= set(files)
                for name, data in files.items():
                    assert data == (dense_cli / name).read_bytes(), name
                page.screenshot(path=str(shots / "app_dense.png"), full_page=True)
            finally:
                browser.close()
        assert server.poll() is None, "the app stopped while in use"
        server.terminate()
        assert server.wait(timeout=30) == 143  # SIGTERM ends it as it ends every dpt-mlx command

    assert outside == [], f"the page asked for {outside}"
    assert network.read_text() == "", f"the server tried to reach {network.read_text()}"
    if os.environ.get("DPT_MLX_KEEP_SCREENSHOTS"):  # for the docs: copy them somewhere to look at
        shutil.copytree(shots, os.environ["DPT_MLX_KEEP_SCREENSHOTS"], dirs_exist_ok=True)
