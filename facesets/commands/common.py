"""Options and helpers several commands share (model options, thresholds, summaries)."""
from __future__ import annotations

import argparse
import inspect
import sys

from ..backends import DEFAULT_DET_SIZE, backend_class
from ..engine import ENGINES, cluster_faces
from ..io.materialize import LINK_MODES, place

BACKEND = backend_class()   # the default backend: its model pack and model folder


def defaults(fn) -> dict:
    """Default value of each keyword parameter of ``fn`` (a function or a dataclass): a
    command's defaults are read from the step it runs, never written twice."""
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=BACKEND.DEFAULT_MODEL,
                   help="InsightFace model pack name, or a folder of its ONNX files "
                        f"(default {BACKEND.DEFAULT_MODEL})")
    g.add_argument("--model-root", default=None,
                   help=f"folder holding models/<name>/ (default {BACKEND.DEFAULT_MODEL_ROOT})")
    g.add_argument("--providers", default=None,
                   help="ONNX Runtime providers, comma-separated (default: the best "
                        "available of DirectML, CUDA, CoreML, CPU)")
    g.add_argument("--det-size", type=int, default=DEFAULT_DET_SIZE,
                   help=f"detector input size ({DEFAULT_DET_SIZE})")


def backend_loader(args):
    """A zero-argument function that loads the backend the model options name."""
    def load():
        from ..backends import load_backend
        return load_backend(args.model, args.model_root, args.providers, args.det_size)
    return load


def add_engine_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default=defaults(cluster_faces)["engine"],
                   choices=["auto"] + sorted(ENGINES),
                   help="clustering engine (auto: by number of faces)")


def add_link_option(p: argparse.ArgumentParser) -> None:
    link = defaults(place)["link"]
    p.add_argument("--link", default=link, choices=LINK_MODES,
                   help=f"how photos are placed in output folders (default {link})")


def add_progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (summaries are still printed)")


def say(msg: str) -> None:
    """A summary line for the operator (stdout; progress bars go to stderr)."""
    print(msg, flush=True)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)
