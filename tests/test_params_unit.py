"""Steps take parameter objects, never argparse namespaces, and define no options; the worker
options (runtime/worker.py) read their defaults from a kind's parameters dataclass, and the
old ``--batch`` is a hidden alias of ``--flush-every`` (and ``--batch-size`` where the kind's
model has a batch)."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import facesets.steps
from facesets.runtime.worker import (WorkerParams, field_defaults, params_from, settle_options,
                                     worker_options)
from facesets.steps.embed_queue import EmbedWorkerParams
from facesets.steps.occlusion import ClipOptions, OcclusionWorkerParams

pytestmark = pytest.mark.unit

ARGPARSE_WORDS = re.compile(r"argparse|add_argument|Namespace")


def step_modules():
    return [importlib.import_module(f"facesets.steps.{m.name}")
            for m in pkgutil.iter_modules(facesets.steps.__path__)]


def functions_of(module):
    """Every function and method defined in ``module`` (nested classes included)."""
    def walk(owner):
        for value in vars(owner).values():
            fn = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if inspect.isfunction(fn) and fn.__module__ == module.__name__:
                yield fn
            elif inspect.isclass(value) and value.__module__ == module.__name__:
                yield from walk(value)
    return list(walk(module))


def test_every_step_module_is_checked():
    names = {m.__name__.rsplit(".", 1)[1] for m in step_modules()}
    on_disk = {p.stem for p in Path(facesets.steps.__file__).parent.glob("*.py")
               if p.stem != "__init__"}
    assert names == on_disk and {"occlusion", "video", "audit", "embed_queue"} <= names


@pytest.mark.parametrize("module", step_modules(), ids=lambda m: m.__name__)
def test_step_defines_no_options_and_takes_no_namespace(module):
    source = Path(module.__file__).read_text()
    hits = [f"{n}: {line.strip()}" for n, line in enumerate(source.splitlines(), 1)
            if ARGPARSE_WORDS.search(line)]
    assert not hits, f"{module.__name__} mentions argparse: {hits}"
    named_args = [fn.__qualname__ for fn in functions_of(module)
                  for p in inspect.signature(fn).parameters.values()
                  if p.name == "args" and p.kind is not p.VAR_POSITIONAL]
    assert not named_args, f"{module.__name__}: a parameter named args in {named_args}"


def test_the_check_finds_a_namespace_parameter():
    # the walk above must see methods and plain functions, or the test cannot fail
    import types

    mod = types.ModuleType("fake_step")
    exec("class Job:\n    def make(self, args): pass\n"
         "def plain(queue, args): pass\n", mod.__dict__)
    found = {fn.__qualname__ for fn in functions_of(mod)
             if "args" in inspect.signature(fn).parameters}
    assert found == {"Job.make", "plain"}


def test_worker_params_are_frozen_dataclasses():
    for cls in (WorkerParams, EmbedWorkerParams, OcclusionWorkerParams, ClipOptions):
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls
    with pytest.raises(dataclasses.FrozenInstanceError):
        OcclusionWorkerParams(results="r").flush_every = 3


def parse(params_type, *argv, extra=None):
    p = argparse.ArgumentParser()
    worker_options(p, params_type)
    if extra:
        extra(p)
    args = p.parse_args(["queue.json", "results", *argv])
    settle_options(args, params_type)
    return args


@dataclasses.dataclass(frozen=True)
class OddDefaults(WorkerParams):
    flush_every: int = 13
    workers: int = 1
    batch_size: int = 3


def test_the_flush_window_default_is_embeds():
    from facesets.commands.common import defaults
    from facesets.steps.embed import embed_folder

    assert field_defaults(WorkerParams)["flush_every"] == defaults(embed_folder)["flush_every"]
    assert field_defaults(OcclusionWorkerParams)["flush_every"] == \
        field_defaults(WorkerParams)["flush_every"]


def test_option_defaults_come_from_the_dataclass(capsys):
    args = parse(OddDefaults)
    assert (args.flush_every, args.batch_size, args.workers) == (13, 3, 1)
    params = params_from(args, OddDefaults)
    assert params == OddDefaults(results="results", flush_every=13, batch_size=3, workers=1)
    d = field_defaults(EmbedWorkerParams)
    args = parse(EmbedWorkerParams)
    assert (args.flush_every, args.workers) == (d["flush_every"], d["workers"])
    assert not hasattr(args, "batch_size")     # the embed model has no batch option
    assert capsys.readouterr().err == ""


def test_occlusion_params_from_options():
    from facesets.commands.occlusion import scorer_options, worker_params

    args = parse(OcclusionWorkerParams, "--flush-every", "7", "--batch-size", "2",
                 "--scorer", "onnx:m.onnx", "--pretrained", "none", "--fp16",
                 extra=scorer_options)
    params = worker_params(args)
    assert isinstance(params, OcclusionWorkerParams)
    assert (params.flush_every, params.batch_size, params.scorer) == (7, 2, "onnx:m.onnx")
    assert params.clip == ClipOptions(pretrained="none", fp16=True)
    opts = params.clip.scorer_options()
    assert opts["pretrained"] is None and opts["fp16"] is True
    assert opts["model"] == field_defaults(ClipOptions)["clip_model"]


@pytest.mark.parametrize("argv, want", [
    (["--batch", "4"], (4, 4)),
    (["--batch", "4", "--flush-every", "9"], (9, 4)),
    (["--batch", "4", "--batch-size", "16"], (4, 16)),
])
def test_old_batch_is_a_hidden_alias_with_one_warning(capsys, argv, want):
    args = parse(OcclusionWorkerParams, *argv)
    assert (args.flush_every, args.batch_size) == want
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--batch is deprecated" in err[0]
    assert "--flush-every" in err[0] and "--batch-size" in err[0]


def test_old_batch_without_a_model_batch_means_the_flush_window(capsys):
    args = parse(WorkerParams, "--batch", "6")
    assert args.flush_every == 6 and not hasattr(args, "batch_size")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--flush-every" in err[0] and "--batch-size" not in err[0]


def test_help_says_which_is_which():
    p = argparse.ArgumentParser()
    worker_options(p, OcclusionWorkerParams)
    text = p.format_help()
    assert "--batch " not in text and "--batch N" not in text   # the alias is hidden
    flush = text[text.index("--flush-every N"):text.index("--batch-size N  ")]
    assert "kill" in flush and "--batch-size" in flush
    assert "inference batch" in text[text.index("--batch-size N  "):]
    p = argparse.ArgumentParser()
    worker_options(p, WorkerParams)
    assert "--batch-size" not in p.format_help()


@pytest.mark.parametrize("argv, flag", [(["--flush-every", "0"], "--flush-every"),
                                        (["--batch-size", "0"], "--batch-size"),
                                        (["--batch", "-1"], "--flush-every"),
                                        (["--workers", "-1"], "--workers")])
def test_bad_windows_are_one_line_errors(argv, flag):
    with pytest.raises(ValueError, match=f"^{flag} -?[0-9]+: must be"):
        parse(OcclusionWorkerParams, *argv)
