"""The app's page (Gradio): pick a checkpoint, drop photos, and see the photo and its depth side by side,
a 3D view, measurements, and the files the command line would write.

Nothing here reaches the internet: Gradio's analytics and update check are off (set before Gradio is
imported), the page uses Gradio's bundled fonts and scripts, and nothing is shared unless the command
asks for it (``--share``). A checkpoint given as a Hub id is downloaded once, as everywhere in dpt_mlx.

Every handler turns a problem into one line in the status box (a bug's traceback goes to the server's
stderr, never to the page).
"""

import html
import os
import sys
import traceback
from pathlib import Path

from ..errors import DPTError, first_line
from ..processing.mesh import DEFAULT_EDGE_THRESHOLD, DEFAULT_MAX_VERTICES
from ..processing.visualize import COLORMAPS
from .session import Result, Session, Settings, horizontal_fov, measure

OFFLINE = {
    "GRADIO_ANALYTICS_ENABLED": "False",  # no usage reports, no version check
    "GRADIO_SSR_MODE": "False",  # no Node server
}
APP_EXTRA = 'pip install "dpt_mlx[app]"'
MARK = (255, 32, 160)  # the measuring marks
FRAMING = 1.4  # the 3D viewer's camera distance, in diagonals of the mesh's bounding box


def import_gradio():
    """The gradio module, imported with its network features off; ImportError with the install command."""
    for name, value in OFFLINE.items():
        os.environ[name] = value
    try:
        import gradio
    except ImportError:
        raise ImportError(f"the app needs gradio: {APP_EXTRA}") from None
    return gradio


def _one_line(e: BaseException) -> str:
    """A handler's problem for the status box: a user's error as it is; a bug's traceback to stderr."""
    if not isinstance(e, (DPTError, ValueError, OSError)):
        traceback.print_exc(file=sys.stderr)
    return f"error: {' '.join(first_line(e).split())}"


def _optional(value) -> float | None:
    """A number box: empty or 0 means "not given"."""
    return None if value in (None, "") or float(value) == 0 else float(value)


def _camera_text(result: Result) -> str:
    if not result.has("depth"):
        return ""
    if not result.metric and "height" in result.kind:
        return (
            f"**Heights:** {result.kind}, seen from above: no camera, so no point cloud, mesh or "
            "measurements; the 3D view is a relief of the heights."
        )
    if not result.metric:
        return (
            f"**Depth:** {result.kind}. No camera: relative depth has no scale, "
            "so no point cloud, mesh or measurements."
        )
    camera, w = result.camera, result.values.shape[1]
    taken = "" if "metres" in result.kind else " (taken as metres)"
    return (
        f"**Depth:** {result.kind}{taken}. **Camera:** {camera.describe()}; "
        f"horizontal field of view {horizontal_fov(camera, w):.4g}°."
    )


def _legend_html(result: Result) -> str:
    rows = "".join(
        f'<li><span style="display:inline-block;width:1em;height:1em;background:rgb{color};'
        f'border:1px solid #888;margin-right:.5em;vertical-align:middle"></span>'
        f"{html.escape(name)} ({i}): {share * 100:.1f}%</li>"
        for i, name, share, color in result.legend
    )
    return f'<ul id="legend-list" style="list-style:none;padding:0">{rows}</ul>'


def _marked(result: Result, points: list[tuple[int, int]]):
    """The photo with the clicked points marked and joined."""
    from PIL import ImageDraw

    image = result.photo.copy()
    draw = ImageDraw.Draw(image)
    radius = max(4, round(max(image.size) / 60))
    width = max(2, radius // 3)
    if len(points) == 2:
        draw.line([tuple(points[0]), tuple(points[1])], fill=MARK, width=width)
    for x, y in points:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=MARK, width=width)
    return image


def build_app(session: Session, model: str, colormap: str = "inferno"):
    """The Gradio Blocks of the app, working in ``session``, with checkpoint ``model`` filled in."""
    gr = import_gradio()

    with gr.Blocks(title="dpt_mlx", analytics_enabled=False) as app:
        results = gr.State({})  # photo name -> Result
        clicks = gr.State([])  # the measuring points so far, (x, y) pixels
        gr.Markdown(
            "## dpt_mlx: depth, segmentation and surface normals\nPick a checkpoint (a Hugging Face Hub id or a "
            "local folder), drop photos, and get the depth, a 3D view and the files `dpt-mlx` writes for them."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                checkpoint = gr.Textbox(label="Checkpoint", value=model, elem_id="checkpoint")
                photos = gr.File(
                    label="Photos", file_count="multiple", file_types=["image"], type="filepath", elem_id="photos"
                )
                cmap = gr.Dropdown(list(COLORMAPS), value=colormap, label="Colour map", elem_id="colormap")
                with gr.Accordion("Camera and mesh", open=False):
                    focal = gr.Number(label="Focal length in pixels (0: from EXIF, else 60°)", value=0, minimum=0)
                    fov = gr.Number(label="Horizontal field of view in degrees (0: not given)", value=0, minimum=0)
                    metric = gr.Checkbox(label="This checkpoint's depth is in metres (--depth-kind metric)")
                    edge = gr.Number(
                        label="Mesh edge threshold (relative depth jump; 0 keeps every triangle)",
                        value=DEFAULT_EDGE_THRESHOLD,
                        minimum=0,
                    )
                    budget = gr.Number(
                        label="Mesh vertex budget (0: every pixel)", value=DEFAULT_MAX_VERTICES, precision=0, minimum=0
                    )
                run = gr.Button("Estimate", variant="primary", elem_id="run")
                status = gr.Textbox(label="Status", interactive=False, max_lines=3, elem_id="status")
                shown = gr.Dropdown(label="Photo shown", choices=[], elem_id="shown")
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
            with gr.Column(scale=2):
                slider = gr.ImageSlider(
                    label="Photo | depth", type="pil", format="png", elem_id="slider", max_height=480
                )
                camera = gr.Markdown(elem_id="camera")
                normals = gr.Image(
                    label="Surface normals",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="normals",
                    visible=False,
                )
                with gr.Row() as depth_row:
                    view = gr.Model3D(label="3D mesh", elem_id="view3d", height=420, clear_color=(0.1, 0.1, 0.12, 1))
                    with gr.Column() as measuring:
                        ruler = gr.Image(
                            label="Measure: click two points",
                            type="pil",
                            format="png",
                            interactive=False,
                            elem_id="measure",
                            height=340,
                        )
                        distance = gr.Textbox(label="Distance", interactive=False, elem_id="distance")
                with gr.Row(visible=False) as segmentation:
                    classes = gr.Image(
                        label="Class map", type="pil", format="png", interactive=False, elem_id="classes"
                    )
                    overlay = gr.Image(label="Overlay", type="pil", format="png", interactive=False, elem_id="overlay")
                    legend = gr.HTML(label="Classes", elem_id="legend")

        shown_outputs = [slider, camera, normals, view, ruler, distance, depth_row, measuring, segmentation]
        shown_outputs += [classes, overlay, legend, clicks]

        def show(result: Result | None) -> list:
            """The page's views of one result (or cleared), in the order of ``shown_outputs``."""
            from PIL import Image

            views = {
                slider: None,
                camera: "",
                normals: gr.update(value=None, visible=False),
                view: gr.update(value=None),
                ruler: None,
                distance: "",
                # "hidden" keeps the 3D viewer in the page: one removed and put back shows no mesh
                depth_row: gr.update(visible=True if result is None else "hidden"),
                measuring: gr.update(visible=result is None),
                segmentation: gr.update(visible=False),
                classes: None,
                overlay: None,
                legend: "",
                clicks: [],
            }
            if result is None:
                return [views[c] for c in shown_outputs]
            normals_picture = Image.open(result.file("png", "normals")) if result.has("normals") else None
            if result.has("segmentation"):
                overlay_image = Image.open(result.file("overlay", "segmentation"))
                views[slider] = gr.update(value=(result.photo, overlay_image), label="Photo | classes")
                views[segmentation] = gr.update(visible=True)
                views[classes] = Image.open(result.file("png", "segmentation")).convert("RGB")
                views[overlay], views[legend] = overlay_image, _legend_html(result)
            if result.task == "normals":
                views[slider] = gr.update(value=(result.photo, normals_picture), label="Photo | normals")
            elif normals_picture is not None:
                views[normals] = gr.update(value=normals_picture, visible=True)
            if result.has("depth"):
                label = "Relief preview: not a true 3D shape" if result.relief else "3D mesh (the GLB download)"
                camera_position = (None, None, FRAMING * result.view_size if result.view_size else None)
                depth_picture = Image.open(result.file("png", "depth"))
                views[slider] = gr.update(value=(result.photo, depth_picture), label="Photo | depth")
                views[camera] = _camera_text(result)
                views[view] = gr.update(
                    value=str(result.view) if result.view else None, label=label, camera_position=camera_position
                )
                views[ruler] = result.photo if result.metric else None
                views[distance] = "" if result.metric else "Measuring needs metric depth."
                views[depth_row] = gr.update(visible=True)
                views[measuring] = gr.update(visible=result.metric)
            return [views[c] for c in shown_outputs]

        def estimate(source, files, colormap_name, focal_px, fov_deg, metres, threshold, vertices):
            empty = [{}, gr.update(choices=[], value=None), None]
            try:
                settings = Settings(
                    colormap=colormap_name,
                    focal_length=_optional(focal_px),
                    fov=_optional(fov_deg),
                    metric=bool(metres),
                    mesh_edge_threshold=float(threshold or 0),
                    mesh_max_vertices=int(vertices or 0) or None,
                )
                paths = [f if isinstance(f, str) else getattr(f, "name", f) for f in files or []]
                done, notes = session.run(source, paths, settings)
            except Exception as e:  # noqa: BLE001 - one line on the page, whatever it was
                return [*empty, _one_line(e), *show(None)]
            if not done:
                return [*empty, "error: " + ("; ".join(notes) or "nothing was written"), *show(None)]
            by_name = {}
            for result in done:
                name, n = result.name, 2
                while name in by_name:  # two photos of one name
                    name, n = f"{result.name} ({n})", n + 1
                by_name[name] = result
            first = next(iter(by_name))
            files_out = [str(path) for result in done for _, path in result.files]
            what = {"segmentation": "segmentation", "normals": "surface normals"}.get(done[0].task, done[0].kind)
            if done[0].task == "dense":
                what += ", surface normals and segmentation"
            line = f"{len(done)} photo{'s' if len(done) > 1 else ''} done with {source.strip()} ({what})"
            if notes:
                line += "; " + "; ".join(notes)
            return [
                by_name,
                gr.update(choices=list(by_name), value=first),
                files_out,
                line,
                *show(by_name[first]),
            ]

        def pick(done: dict, name):
            return show(done.get(name)) if name else show(None)

        def click(done: dict, name, points: list, event: gr.SelectData):
            result = done.get(name)
            if result is None or not result.metric:
                return None if result is None else result.photo, "Measuring needs metric depth.", []
            x, y = (int(v) for v in event.index[:2])
            points = ([] if len(points) >= 2 else list(points)) + [(x, y)]
            if len(points) < 2:
                return _marked(result, points), f"A ({x}, {y}): now click the second point", points
            try:
                metres, a, b = measure(result, points[0], points[1])
            except Exception as e:  # noqa: BLE001
                return _marked(result, points), _one_line(e), []
            text = (
                f"{metres:.3f} m between A {tuple(points[0])} at {a[2]:.3f} m "
                f"and B {tuple(points[1])} at {b[2]:.3f} m depth"
            )
            return _marked(result, points), text, points

        inputs = [checkpoint, photos, cmap, focal, fov, metric, edge, budget]
        outputs = [results, shown, downloads, status, *shown_outputs]
        run.click(estimate, inputs, outputs, concurrency_limit=1)
        photos.upload(estimate, inputs, outputs, concurrency_limit=1)
        shown.input(pick, [results, shown], shown_outputs)
        ruler.select(click, [results, shown, clicks], [ruler, distance, clicks])
    return app


def serve_paths(session: Session) -> list[str]:
    """The folders Gradio may serve files from: the session's."""
    return [str(Path(session.root).resolve())]
