"""What the app does, without Gradio: load a checkpoint (the last one stays loaded), run photos through
the command line's runner (so every file is what ``dpt-mlx`` writes for that photo and checkpoint),
and answer the page's questions about the results (a distance between two pixels, the legend).

Each run writes into its own folder under the session's root, one subfolder per photo:
``<root>/run-0001/1/<name>_depth.png`` and so on; a root that already holds runs gets the next free number.

Every MLX call (loading and running checkpoints) happens on one thread the session owns, whatever
thread the web server calls from: MLX keeps its streams per thread, and that thread releases them
(``mx.clear_streams``) before the app exits, so the process ends cleanly instead of aborting in MLX's
teardown.
"""

from __future__ import annotations

import itertools
import math
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DPTError, UsageError, first_line
from ..processing.mesh import DEFAULT_EDGE_THRESHOLD, DEFAULT_MAX_VERTICES
from ..processing.writers import OutputOptions, camera_for, depth_kind

DEPTH_KINDS = ("png", "png16", "npy", "exr")  # every depth model; metric depth adds METRIC_KINDS
METRIC_KINDS = ("ply", "glb")
SEGMENTATION_KINDS = ("png", "npy")  # and the overlay
NORMALS_KINDS = ("png", "npy")
# a predictor's task -> the parts of its results
PARTS = {
    "depth-estimation": ("depth",),
    "image-segmentation": ("segmentation",),
    "normal-estimation": ("normals",),
    "dense-prediction": ("depth", "normals", "segmentation"),
}
RELIEF_SUFFIX = "_relief.glb"  # relative depth's 3D preview (not a download: the command line writes none)


@dataclass(frozen=True)
class Settings:
    """The page's options, as the command line's."""

    colormap: str = "inferno"
    focal_length: float | None = None  # --focal-length
    fov: float | None = None  # --fov
    metric: bool = False  # --depth-kind metric
    mesh_edge_threshold: float = DEFAULT_EDGE_THRESHOLD
    mesh_max_vertices: int | None = DEFAULT_MAX_VERTICES
    alpha: float = 0.5  # segmentation overlay

    def check(self) -> None:
        """UsageError (one line) for a value the command line would refuse."""
        if self.focal_length is not None and self.fov is not None:
            raise UsageError("give a focal length or a field of view, not both")
        if self.focal_length is not None and not (0 < self.focal_length < math.inf):
            raise UsageError(f"the focal length must be a positive number of pixels, got {self.focal_length:g}")
        if self.fov is not None and not 0 < self.fov < 180:
            raise UsageError(f"the field of view must be between 0 and 180 degrees, got {self.fov:g}")
        if not 0 <= self.mesh_edge_threshold < math.inf:
            raise UsageError(f"the mesh edge threshold must be a number >= 0, got {self.mesh_edge_threshold:g}")
        if self.mesh_max_vertices is not None and self.mesh_max_vertices < 4:
            raise UsageError(f"the mesh vertex budget must be >= 4 (or 0: every pixel), got {self.mesh_max_vertices}")


@dataclass
class Result:
    """One photo's outputs and what the page shows of them."""

    name: str  # the photo's file name
    task: str  # what the checkpoint gives: "depth", "segmentation", "normals", or "dense" (all three)
    photo: object  # the upright RGB PIL image the model saw
    files: list[tuple[str, Path]]  # (output kind, file), as the command line names them ("depth:png" when dense)
    values: np.ndarray | None = None  # depth (float32, as written to the npy), for the 3D view and measuring
    kind: str = ""  # what the depth is (depth_kind), for the page
    metric: bool = False
    camera: object = None  # the CameraIntrinsics of the ply / glb (camera_for), metric depth only
    view: Path | None = None  # what the 3D viewer shows: the mesh (metric) or a relief preview
    view_size: float | None = None  # the diagonal of that mesh's bounding box, for the viewer's camera
    relief: bool = False
    legend: list[tuple[int, str, float, tuple[int, int, int]]] = field(default_factory=list)

    def file(self, kind: str, part: str | None = None) -> Path | None:
        """The file of output ``kind`` ("png", "npy", "overlay", "glb" ...) of ``part`` ("depth", "normals",
        "segmentation"; default the result's task), or None."""
        part = part or self.task
        return next((path for k, path in self.files if k in (f"{part}:{kind}", kind) and self.has(part)), None)

    def has(self, part: str) -> bool:
        """Whether the result holds ``part`` ("depth", "normals", "segmentation")."""
        return part == self.task or self.task == "dense"


class _Lines:
    """A Console for the runner that keeps its lines instead of printing them."""

    def __init__(self):
        self.infos: list[str] = []
        self.errors: list[str] = []

    def info(self, message: str) -> None:
        self.infos.append(message)

    def detail(self, message: str) -> None:
        pass

    def error(self, message: str) -> None:
        self.errors.append(first_line(message))

    def advance(self) -> None:
        pass


def _available(kinds: list[str]) -> tuple[list[str], list[str]]:
    """``kinds`` less those whose library is missing, and a note for each one left out."""
    from ..processing.exr import require_openexr
    from ..processing.mesh import require_trimesh
    from ..processing.points import require_plyfile

    checks = {"exr": require_openexr, "ply": require_plyfile, "glb": require_trimesh}
    kept, notes = [], []
    for kind in kinds:
        try:
            if kind in checks:
                checks[kind]()
            kept.append(kind)
        except ImportError as e:
            notes.append(f"no {kind}: {e}")
    return kept, notes


class _MLXThread:
    """One thread that runs every call given to it, in turn: the only thread of the app that touches MLX.
    ``close`` lets it finish the calls already given, releases its MLX streams and ends it."""

    def __init__(self):
        self._calls: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="dpt-mlx-model", daemon=True)
        self._thread.start()

    def call(self, fn: Callable, *args):
        """``fn(*args)`` on the thread; its result, or its exception raised here."""
        done, box = threading.Event(), {}
        with self._lock:  # every call is queued before close's end mark, or refused
            if self._closed:
                raise UsageError("the app is stopping")
            self._calls.put((fn, args, done, box))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            fn, args, done, box = item
            try:
                box["value"] = fn(*args)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                box["error"] = e
            finally:
                done.set()
        mx = sys.modules.get("mlx.core")
        if mx is not None:
            mx.clear_streams()  # this thread's streams; nothing runs on it after this

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._calls.put(None)
        self._thread.join()


class Session:
    """The app's state on the server: the loaded checkpoint and the folder runs write into."""

    def __init__(self, root: str | Path, dtype: str | None = None):
        self.root = Path(root)
        self.dtype = dtype
        self._predictor = None
        self._source: str | None = None
        self._runs = itertools.count(1)
        self._closing = threading.Event()
        self._mlx = _MLXThread()  # one run at a time, on the one thread that uses MLX

    def close(self) -> None:
        """Stop after the photo in progress (the rest of its run is skipped) and release MLX; idempotent."""
        self._closing.set()
        self._mlx.close()

    def _checkpoint(self, source: str):
        """The predictor for checkpoint ``source`` (a Hub id or a folder), loaded once and kept; a one-line
        UsageError when it cannot be loaded. On the session's MLX thread only."""
        source = (source or "").strip()
        if not source:
            raise UsageError("give a checkpoint: a Hugging Face Hub id or a local folder")
        if self._predictor is None or self._source != source:
            from ..predictor import load_predictor

            try:
                predictor = load_predictor(source, dtype=self.dtype)
            except (DPTError, OSError, ValueError) as e:
                raise UsageError(f"cannot load {source}: {first_line(e)}") from None
            self._predictor, self._source = predictor, source
        return self._predictor

    def run(self, source: str, photos: list[str], settings: Settings) -> tuple[list[Result], list[str]]:
        """Every photo through checkpoint ``source``: (the results, one line per problem: a photo that
        failed, an output left out). UsageError when nothing can be done at all."""
        settings.check()
        if not photos:
            raise UsageError("drop one or more photos first")
        return self._mlx.call(self._load_and_run, source, [Path(p) for p in photos], settings)

    def _load_and_run(self, source: str, photos: list[Path], settings: Settings):
        if self._closing.is_set():
            raise UsageError("the app is stopping")
        return self._run(self._checkpoint(source), photos, settings)

    def _run(self, predictor, photos: list[Path], settings: Settings) -> tuple[list[Result], list[str]]:
        from ..cli.inputs import plan
        from ..cli.predict import Runner
        from ..configs import camera_depth, predicts_metres

        parts = PARTS[predictor.task]
        task = parts[0] if len(parts) == 1 else "dense"
        # metric camera depth: a point cloud, a mesh, measuring (CHMv2's canopy heights get a relief)
        config = predictor.config
        metric = "depth" in parts and camera_depth(config) and (settings.metric or predicts_metres(config))
        wanted = {"depth": DEPTH_KINDS + (METRIC_KINDS if metric else ()), "normals": NORMALS_KINDS}
        kinds, notes = _available(list(dict.fromkeys(k for p in parts for k in wanted.get(p, SEGMENTATION_KINDS))))
        run_dir = self._new_run_dir()
        jobs, options = [], None
        for number, photo in enumerate(photos, 1):
            options = OutputOptions(
                formats=tuple(kinds),
                output_dir=str(run_dir / str(number)),
                overlay="segmentation" in parts,
                alpha=settings.alpha,
                colormap=settings.colormap,
                focal_length=settings.focal_length,
                fov=settings.fov,
                mesh_edge_threshold=settings.mesh_edge_threshold,
                mesh_max_vertices=settings.mesh_max_vertices,
            )
            work = plan(options, [photo], task, tasks=parts if task == "dense" else ())
            notes += work.rejected
            jobs += work.jobs
        lines = _Lines()
        Runner(options, predictor, lines).run(itertools.takewhile(lambda _: not self._closing.is_set(), jobs))
        notes += [_plain(line, photos) for line in lines.errors]
        results = []
        for job in jobs:
            if all(target.is_file() for _, target in job.outputs):
                results.append(self._result(job, task, predictor, options, metric))
        return results, notes

    def _new_run_dir(self) -> Path:
        """A new, empty ``run-NNNN`` folder under the root: the next number no earlier run has taken."""
        while True:
            run_dir = self.root / f"run-{next(self._runs):04d}"
            try:
                run_dir.mkdir(parents=True)
                return run_dir
            except FileExistsError:
                continue

    def _result(self, job, task: str, predictor, options: OutputOptions, metric: bool) -> Result:
        from ..configs import camera_depth
        from ..processing import visualize as V
        from ..processing.images import load_image

        result = Result(Path(job.path).name, task, load_image(job.path), list(job.outputs))
        if result.has("segmentation"):
            classes = np.load(result.file("npy", "segmentation"), allow_pickle=False)
            palette = V.color_classes(
                np.arange(max(predictor.num_labels, int(classes.max()) + 1)), predictor.num_labels
            )
            result.legend = [
                (i, name, share, tuple(int(c) for c in palette[i]))
                for i, name, share in V.class_shares(classes, predictor.id2label)
            ]
        if not result.has("depth"):
            return result
        result.values = values = np.load(result.file("npy", "depth"), allow_pickle=False)
        result.kind = depth_kind(predictor.config)
        result.metric = metric
        if metric:
            result.camera = camera_for(job, values, options)
            result.view, result.view_size = result.file("glb", "depth"), _extent(values, result.camera)
        else:
            result.relief = True
            raised = "inverse" in result.kind or not camera_depth(predictor.config)  # larger = closer, or taller
            result.view, result.view_size = self._relief(result, job, raised)
        return result

    def _relief(self, result: Result, job, larger_is_closer: bool) -> tuple[Path | None, float | None]:
        """A relief preview of depth without a camera for the 3D viewer, and its size (None, None without
        trimesh)."""
        try:
            from ..processing.mesh import relief_mesh, save_glb

            mesh = relief_mesh(result.values, result.photo, larger_is_closer=larger_is_closer)
            target = job.outputs[0][1].with_name(Path(job.path).stem + RELIEF_SUFFIX)
            save_glb(mesh, target, {"generator": "dpt_mlx", "relief": "relative depth: not a true shape"})
            return target, float(np.linalg.norm(mesh.extents))
        except ImportError:
            return None, None


def _extent(depth: np.ndarray, camera) -> float | None:
    """About the diagonal of the bounding box of ``depth``'s mesh: the frustum's width and height at the
    farthest depth, and the depth's range."""
    valid = depth[np.isfinite(depth) & (depth > 0)]
    if valid.size == 0:
        return None
    near, far = float(valid.min()), float(valid.max())
    h, w = depth.shape
    return math.sqrt((w * far / camera.fx) ** 2 + (h * far / camera.fy) ** 2 + (far - near) ** 2)


def _plain(line: str, photos: list[Path]) -> str:
    """A runner's error line with the upload folders left out: the photo's name only."""
    for photo in photos:
        line = line.replace(str(photo), photo.name)
    return line


def measure(result: Result, a: tuple[int, int], b: tuple[int, int]) -> tuple[float, np.ndarray, np.ndarray]:
    """The distance in the depth's units between pixels ``a`` and ``b`` ((x, y): column, row), each
    back-projected with the result's camera at its centre as the point cloud and mesh are; (distance,
    point a, point b). UsageError where a pixel has no valid depth or the depth is not metric."""
    from ..processing.points import back_project

    if not result.metric or result.camera is None:
        raise UsageError("measuring needs metric depth (a metric checkpoint, or 'depth in metres' ticked)")
    h, w = result.values.shape
    points = []
    for x, y in (a, b):
        x, y = int(x), int(y)
        if not (0 <= x < w and 0 <= y < h):
            raise UsageError(f"pixel ({x}, {y}) is outside the {w}x{h} photo")
        z = float(result.values[y, x])
        if not (math.isfinite(z) and z > 0):
            raise UsageError(f"pixel ({x}, {y}) has no valid depth")
        points.append(back_project(np.array([z]), np.array([y]), np.array([x]), result.camera)[0])
    return float(np.linalg.norm(points[0].astype(np.float64) - points[1].astype(np.float64))), points[0], points[1]


def horizontal_fov(camera, width: int) -> float:
    """The horizontal field of view in degrees of ``camera`` over an image ``width`` pixels wide."""
    return math.degrees(2 * math.atan(width / 2.0 / camera.fx))
