"""Command line: `landscape-ray run | train | hessian | render | compare | report | figure | paper | info | verify |
upgrade | directions | schema` (also `python -m landscape_ray`).

    landscape-ray run jobs/quickstart.yaml --set grid.x.num=21 --overwrite
    landscape-ray render runs/demo/surface.zarr --kind contour,heatmap --log
    landscape-ray compare runs/a.zarr runs/b.zarr --out ab.pdf --vmin 0.1 --vmax 10 --level-step 0.5
    landscape-ray info runs/demo/surface.zarr
    landscape-ray verify runs/demo/surface.zarr     # exit 1 if a chunk is damaged; --resume repairs it
    landscape-ray schema > spec.schema.json
    landscape-ray train jobs/quickstart-train.yaml

Bad input prints one `field: message` line per problem and exits with status 2;
a run that cannot finish exits with status 1, Ctrl-C with 130 and SIGTERM with
143 (what was computed is kept). None prints a traceback unless `--debug` comes
before the command. A spec file `-` is stdin.

The command chosen is loaded by name (`parser.py` names each one's function), so that reading a store loads
neither torch nor Ray.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from landscape_ray.cli.parser import parser
from landscape_ray.core.errors import EXIT_CODES, Interrupted, RunError, SpecError, unwind
from landscape_ray.core.paths import cache_dir
from landscape_ray.core.plugins import import_object


def private_ray_on_loopback(address) -> None:
    """Process-wide settings for a private local Ray cluster, made here at the entry point before Ray is imported:
    it listens on 127.0.0.1 only, and its workers import the user's modules from the working directory. Ray's
    notice that such a cluster uses token authentication (its default) is not logged into every run's output
    and a bad input's one line. (Setting RAY_AUTH_MODE=token would say it too, but only before Ray is imported:
    Ray reads it once per process.)"""
    if not (address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    Interrupted.by = signal.SIGINT  # until a SIGTERM says otherwise (main may be called again in one process)
    # The process-wide settings of a command, made here once (library code sets none): a SIGTERM unwinds what runs
    # as Ctrl-C does (actors stopped, finished tiles on disk; `connect` puts this handler back after ray.init
    # installs its own), and a private Ray cluster is loopback-only, before Ray is imported.
    main_thread = threading.current_thread() is threading.main_thread()  # where Python lets a handler be set
    sigterm = signal.signal(signal.SIGTERM, unwind) if main_thread else None
    private_ray_on_loopback(getattr(args, "address", None))
    # Compiled kernels (eval.compile) in this tool's cache, kept between runs and shared by this machine's actors (a
    # private cluster's inherit it; torch would otherwise pick /tmp once anything in the process touched Inductor).
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir("inductor")))
    # transformers' loading and saving bars (a language model's folder, every epoch of a training) would bury the
    # command's own lines; read when transformers is first imported, so set before that.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return import_object(args.func, "command")(args) or 0
    except (SpecError, RunError) as err:
        if args.debug:
            raise
        code = next(code for kind, code in EXIT_CODES if isinstance(err, kind))
        print(f"run failed: {err}" if code == 1 else str(err), file=sys.stderr)
        return code
    except (Interrupted, KeyboardInterrupt) as err:  # a run reports what it kept; elsewhere, just that
        if args.debug:
            raise
        print(str(err) if isinstance(err, Interrupted) else "interrupted", file=sys.stderr)
        return 128 + Interrupted.by
    except BrokenPipeError:  # `landscape-ray info … | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:  # disk full, permissions, a folder where a file should be: one line, the file named
        if args.debug:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"run failed: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, sigterm)


if __name__ == "__main__":
    sys.exit(main())
