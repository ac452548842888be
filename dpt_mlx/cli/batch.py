"""The batch command: depth or segmentation maps for a whole image collection, on Ray Data.

    python -m dpt_mlx.batch --input photos/ --output depth/ --model LiheYoung/depth-anything-small-hf
    python -m dpt_mlx.batch --input 'photos/**/*.jpg' --output depth/ --format png16,npy --workers 2
    python -m dpt_mlx.batch --input s3://bucket/photos --output /shared/depth --address auto

It writes what ``dpt-mlx --input-dir DIR --output-dir OUT`` writes, under the same names, and is
resumable: an image whose outputs all exist is skipped before anything is sent to Ray, and one
with only some of them is done again (as ``dpt-mlx --skip-existing``). The Ray workers write the
files (dpt_mlx/ray.py's OutputWriter), so with ``--address`` the output folder must be shared by every node.

Exit status: 0 everything written or skipped; 1 some images failed (each reported, the others
written); 2 nothing done (a usage error, ray not installed, no images, a model that does not
load, workers that no node can hold or that do not start within ``--start-timeout``, every image
failed); 130 / 143 interrupted (finished outputs are kept, a rerun goes on).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DPTError, UsageError, first_line
from ..io.checkpoint import DTYPES
from ..io.files import remove_stale_temps
from ..processing.visualize import COLORMAPS
from ..processing.writers import OutputOptions
from ..ray import START_TIMEOUT, OutputWriter, check_cpus, cluster_cpus, job_row
from .console import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_SOME_FAILED,
    ArgumentParser,
    Console,
    command,
    format_list,
    interrupt_note,
    positive_int,
    program,
    signals_interrupt,
)
from .inputs import Inputs, collect_batch_inputs, plan

DEFAULT_MODEL = "Intel/dpt-large"
FORMATS = ("png", "png16", "npy")
INSTALL = 'ray is not installed; pip install "dpt_mlx[ray]"'

EPILOG = """\
inputs: a folder (its images; with --recursive those below it too), a glob pattern (quote it;
  ** with --recursive), or a URI pyarrow opens (s3://, gs://, hdfs://, file://). Hidden files
  and files named like the outputs are left out.
outputs (in --output; subfolders of the input are mirrored):
  depth:         <name>_depth.png (colour map), <name>_depth16.png (16-bit gray), <name>_depth.npy
  segmentation:  <name>_seg.png (palette, values = class ids), <name>_seg.npy
  An image whose outputs all exist is skipped (a rerun after an interruption does only the rest);
  one with some of them is done again. Files are published atomically and never replace a file
  another run wrote, unless --overwrite.
ray: without --address a local Ray is started on this machine's CPUs; --address auto joins the
  cluster this machine belongs to, ray://HOST:10001 connects to a remote one. The workers load the
  model (a hub id, or a folder every node sees) and write the files, so --output must be the same
  shared folder on every node, and on the machine this runs on: it lists the inputs, skips the
  finished images and checks the files (on a cluster, run it on a node: ray job submit --
  python -m dpt_mlx.batch --address auto ...). Each worker gets --cpus-per-worker CPUs and
  computes with that many threads. Workers that no node can hold are refused at once; workers
  that have not started within --start-timeout (other jobs hold the CPUs) end the run.

exit status: 0 all written (or skipped); 1 some images failed (reported, the rest written);
  2 nothing done (usage error, ray missing, no images, unusable model, workers that cannot be
  placed or do not start, every image failed);
  130 Ctrl-C; 143 SIGTERM."""


_formats = format_list(FORMATS)


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=program("python -m dpt_mlx.batch", "dpt-mlx-batch"),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Depth or segmentation maps for every image of a folder or bucket, with the "
        "model running on Ray Data workers (this machine, or a Ray cluster).",
    )
    p.add_argument("--input", "-i", required=True, metavar="DIR|GLOB|URI", help="the images (see below)")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for the outputs (created if needed)")
    p.add_argument(
        "--model",
        "-m",
        default=DEFAULT_MODEL,
        help=f"Hugging Face Hub repo id or checkpoint folder (default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--format",
        "-f",
        type=_formats,
        action="append",
        metavar="FMT",
        help="png (default), png16 (depth only), npy; comma-separated or repeated",
    )
    p.add_argument(
        "--colormap",
        "-c",
        choices=COLORMAPS,
        default="inferno",
        metavar="NAME",
        help=f"depth PNG colours: {', '.join(COLORMAPS)} (default inferno)",
    )
    p.add_argument("--recursive", "-r", action="store_true", help="also the images in subfolders")
    p.add_argument("--overwrite", action="store_true", help="redo every image, replacing existing outputs")
    p.add_argument(
        "--address",
        metavar="ADDR",
        help="the Ray cluster: auto, ray://HOST:PORT or HOST:PORT (default: start a local Ray)",
    )
    p.add_argument(
        "--workers", "-w", type=positive_int, metavar="N", help="model workers (default: one per node with CPUs)"
    )
    p.add_argument(
        "--cpus-per-worker",
        type=_positive_number,
        metavar="N",
        help="CPUs (and threads) of each worker (default: the most that lets every worker be placed)",
    )
    p.add_argument(
        "--start-timeout",
        type=_positive_number,
        default=START_TIMEOUT,
        metavar="SECONDS",
        help=f"fail when the workers have not started (model loaded) within this time, e.g. because "
        f"other jobs hold the cluster's CPUs (default {START_TIMEOUT:g})",
    )
    p.add_argument(
        "--batch-size", "-b", type=positive_int, default=1, metavar="N", help="images per forward pass (default 1)"
    )
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="compute dtype (default: the checkpoint's)")
    p.add_argument("--flip-tta", action="store_true", help="also predict each image mirrored and average the two")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("--quiet", "-q", action="store_true", help="print errors only (no Ray progress)")
    talk.add_argument("--verbose", "-v", action="store_true", help="every image's files; tracebacks on errors")
    return p


# ----------------------------------------------------------------------------------------------
# Ray


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL) from None
    return ray


def _start(ray, args) -> bool:
    """Connect to (or start) Ray; True when this call did (and so ``ray.shutdown`` is ours to call)."""
    if ray.is_initialized():
        return False
    level = logging.WARNING if args.quiet else logging.INFO
    try:
        if args.address:
            ray.init(address=args.address, logging_level=level)
        else:
            from ..cpu.native import cpu_count

            ray.init(address="local", num_cpus=cpu_count(), logging_level=level)  # a new one, never another's
    except (ConnectionError, RuntimeError, ValueError, OSError) as e:
        raise UsageError(
            f"cannot {'connect to Ray at ' + args.address if args.address else 'start Ray'}: {first_line(e)}"
        ) from None
    return True


def placement(node_cpus: list[float], workers: int | None, per_worker: float | None) -> tuple[int, float]:
    """(workers, CPUs each): default one worker per node, each with the most whole CPUs that still lets
    every worker be placed on these nodes (a share of one CPU when there are more workers than CPUs)."""
    workers = workers or len(node_cpus)
    if per_worker:
        return workers, per_worker
    for each in range(int(max(node_cpus)), 0, -1):
        if sum(int(c // each) for c in node_cpus) >= workers:
            return workers, float(each)
    return workers, int(sum(node_cpus) / workers * 100) / 100


def _actor_pool(ray, size: int) -> dict:
    """``map_batches``'s argument for ``size`` workers, in the spelling this Ray does not call deprecated."""
    version = tuple(int(v) for v in ray.__version__.split(".")[:2] if v.isdigit())
    return {"compute": ray.data.ActorPoolStrategy(size=size)} if version >= (2, 51) else {"concurrency": size}


def _node_cpus() -> list[float]:
    cpus = cluster_cpus()
    if not cpus:
        raise UsageError("the Ray cluster has no CPUs for the workers")
    return cpus


def _free_cpus(ray) -> str:
    try:
        return f"{ray.available_resources().get('CPU', 0.0):g} of {ray.cluster_resources().get('CPU', 0.0):g}"
    except Exception:  # noqa: BLE001  (the cluster went away)
        return "an unknown number"


def _root_cause(e: BaseException) -> str:
    """The first line of the error that started a chain of Ray's wrapping errors."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "cause", None) or e.__cause__
        if not isinstance(inner, BaseException):
            break
        e = inner
    return first_line(e)


# ----------------------------------------------------------------------------------------------
# Running


def _check_model(args, console: Console) -> str:
    """Load the model here once, so that one that cannot load is an error before Ray starts; its task
    ("depth" or "segmentation") names the outputs."""
    import mlx.core as mx

    from ..predictor import load_predictor

    if args.quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    predictor = load_predictor(args.model, dtype=args.dtype, flip=args.flip_tta)
    for note in predictor.notes:
        console.detail(note)
    if predictor.task not in ("depth-estimation", "image-segmentation"):
        raise UsageError(f"{args.model} predicts {predictor.task}; the batch command writes depth or segmentation maps")
    task = "depth" if predictor.task == "depth-estimation" else "segmentation"
    console.detail(f"model {args.model}: {type(predictor.model).__name__} ({predictor.task})")
    del predictor
    mx.clear_cache()
    return task


@dataclass
class Tally:
    written: int = 0
    failed: int = 0
    seconds: float = 0.0
    workers: int = 0
    cpus: float = 0.0
    written_jobs: list = field(default_factory=list)


def _run(ray, args, inputs: Inputs, jobs: list, console: Console, tally: Tally) -> None:
    """Every job on Ray Data workers; each image's result counted (and reported) as it comes back."""
    nodes = _node_cpus()
    tally.workers, tally.cpus = placement(nodes, args.workers, args.cpus_per_worker)
    try:
        check_cpus(tally.cpus, tally.workers, nodes)
    except ValueError as e:
        flag = "--cpus-per-worker" if args.cpus_per_worker else "--workers"
        raise UsageError(f"{flag}: {e}") from None
    console.detail(f"{tally.workers} worker(s) with {tally.cpus:g} CPU(s) each, for {len(jobs)} image(s)")
    where = {p: i for i, p in enumerate(inputs.paths)}
    by_name = {}
    rows = []
    for job in jobs:
        i = where[job.path]
        by_name[inputs.names[i]] = job
        rows.append(job_row(job, inputs.names[i], inputs.sources[i]))
    ray.data.DataContext.get_current().enable_progress_bars = not args.quiet
    if args.quiet:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    options = dict(
        model=args.model,
        dtype=args.dtype,
        batch_size=args.batch_size,
        flip_tta=args.flip_tta,
        threads=max(1, int(tally.cpus)),
        filesystem=inputs.filesystem,
        colormap=args.colormap,
        overwrite=args.overwrite,
        verbose=args.verbose,
    )
    dataset = ray.data.from_items(rows).map_batches(
        OutputWriter,
        fn_constructor_kwargs=options,
        num_cpus=tally.cpus,
        batch_size=args.batch_size,
        batch_format="numpy",
        **_actor_pool(ray, tally.workers),
    )
    dataset.context.wait_for_min_actors_s = max(1, int(round(args.start_timeout)))
    start = time.perf_counter()
    try:
        for row in dataset.iter_rows():
            if row["error"]:
                tally.failed += 1
                console.error(row["error"])
            else:
                tally.written += 1
                tally.written_jobs.append(by_name[row["path"]])
                for line in row["details"].splitlines():
                    console.detail(line)
    finally:
        tally.seconds = time.perf_counter() - start


def _missing_outputs(tally: Tally) -> list[Path]:
    """Files the workers wrote that this machine does not see (an --output that is not shared)."""
    return [t for job in tally.written_jobs for _, t in job.outputs if not t.exists()]


def _workers(tally: Tally) -> str:
    return (
        f"{tally.workers} worker{'s' if tally.workers != 1 else ''}, "
        f"{tally.cpus:g} CPU{'s' if tally.cpus != 1 else ''} each"
    )


def _summary(tally: Tally, skipped: int) -> str:
    rate = tally.written / tally.seconds if tally.seconds > 0 else 0.0
    text = (
        f"{tally.written} image{'s' if tally.written != 1 else ''} written in {tally.seconds:.1f} s "
        f"({rate:.2f} images/s; {_workers(tally)})"
    )
    if skipped:
        text += f"; {skipped} skipped (all outputs exist)"
    return text


@command  # exit statuses, SIGTERM / SIGHUP as Ctrl-C, a closed stdout: cli/console.py
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors exit 2 here
    formats = tuple(f for group in (args.format or [["png"]]) for f in group)
    console = Console(args.quiet, args.verbose)
    tally = Tally()
    kept = "(finished outputs kept, no partial files; the same command does the rest)"
    with interrupt_note(lambda: f"after {tally.written} image(s) {kept}"):
        ray = _import_ray()
        inputs = collect_batch_inputs(args.input, args.recursive, console)
        task = _check_model(args, console)
        options = OutputOptions(
            formats=formats,
            output_dir=args.output,
            output_dir_flag="--output",
            overwrite=args.overwrite,
            skip_existing=not args.overwrite,
            recursive=inputs.mirror,
            input_dirs=(inputs.base,),
        )
        work = plan(options, inputs.paths, task)
        stale = remove_stale_temps(t for job in work.jobs for _, t in job.outputs)
        if stale:
            console.detail(f"removed {stale} temporary file(s) left by an earlier, killed run")
        for reason in work.rejected:
            console.error(reason)
        if work.jobs:
            status = _run_on_ray(ray, args, inputs, work.jobs, console, tally)
            if status is not None:
                return status

    missing = _missing_outputs(tally)
    if missing:
        console.error(
            f"{len(missing)} file(s) the workers wrote are not in {args.output} here, e.g. {missing[0]}; "
            "--output must be a folder every Ray node shares, at the same path"
        )
        return EXIT_ERROR
    if tally.written:
        console.info(_summary(tally, len(work.skipped)))
    elif work.skipped:
        console.info(f"{len(work.skipped)} image(s) skipped (all outputs exist in {args.output})")
    failed = tally.failed + len(work.rejected)
    if failed:
        console.error(
            f"{failed} of {len(inputs.paths)} images failed (see above)"
            + ("; the others were written" if tally.written else "")
        )
        return EXIT_SOME_FAILED if tally.written or work.skipped else EXIT_ERROR
    return EXIT_OK


def _run_on_ray(ray, args, inputs: Inputs, jobs: list, console: Console, tally: Tally) -> int | None:
    """Start (or join) Ray, run the jobs and shut down what this started; the exit status when the
    run failed as a whole, else None."""
    started = False
    try:
        started = _start(ray, args)
        with signals_interrupt():  # again: ray.init put in its own SIGTERM handler, which exits at once
            _run(ray, args, inputs, jobs, console, tally)
    except DPTError:
        raise
    except Exception as e:  # noqa: BLE001  (a worker's failure, as Ray wraps it)
        if type(e).__name__ == "GetTimeoutError" and not tally.written:
            console.error(
                f"the Ray workers did not start within {args.start_timeout:g} s ({_workers(tally)}; "
                f"the cluster has {_free_cpus(ray)} CPUs free now): other work holds the CPUs, or "
                "the model loads slowly (--start-timeout)"
            )
            return EXIT_ERROR
        console.error(f"the Ray job failed after {tally.written} image(s): {_root_cause(e)}")
        return EXIT_SOME_FAILED if tally.written else EXIT_ERROR
    finally:
        if started:
            # Ray's objects left in the frames of an interrupted run (the dataset, its iterator)
            # are freed while Ray still runs: freed after its shutdown, they end the process
            # with status 1 instead of the one returned here.
            gc.collect()
            ray.shutdown()
    return None


if __name__ == "__main__":
    sys.exit(main())
