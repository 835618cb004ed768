"""InsightFace model packs (buffalo_l, buffalo_s, any folder of InsightFace ONNX files)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..io.fsutil import sha256_file
from . import onnx_pack
from .base import (DEFAULT_DET_SIZE, BackendError, DetectedFace, FaceBackend,
                   batch_dim_name, inference_lock, run_fixed_batches)

DEFAULT_MODEL = "buffalo_l"
DEFAULT_MODEL_ROOT = "~/.insightface"
# InsightFace picks providers by itself but never DirectML; we pass the best available.
# InsightFace's face_align calls scikit-image's deprecated estimate(); harmless, and noisy
warnings.filterwarnings("ignore", category=FutureWarning, module="insightface")

PROVIDER_PREFERENCE = ["DmlExecutionProvider", "CUDAExecutionProvider",
                       "CoreMLExecutionProvider", "CPUExecutionProvider"]


def best_providers(requested: str | list[str] | None = None) -> list[str]:
    """Providers to use: ``requested`` (comma list) or the best available, CPU last."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if requested:
        wanted = requested.split(",") if isinstance(requested, str) else list(requested)
        wanted = [w.strip() for w in wanted if w.strip()]
        missing = [w for w in wanted if w not in available]
        if missing:
            raise BackendError(f"ONNX Runtime provider(s) {', '.join(missing)} not available "
                               f"here (available: {', '.join(available)}); fix --providers")
        return wanted
    chosen = [p for p in PROVIDER_PREFERENCE if p in available]
    return chosen or ["CPUExecutionProvider"]


def session_options(providers: list[str], intra_threads: int | None = None):
    """ONNX Runtime session options: on CPU, idle inference threads sleep instead of
    spinning, so the threads decoding the next photos get the cores (see facesets.steps.embed)."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    if providers[0] == "CPUExecutionProvider":
        opts.add_session_config_entry("session.intra_op.allow_spinning",
                                      os.environ.get("FACESETS_ORT_SPIN", "0"))
        if intra_threads or os.environ.get("FACESETS_ORT_THREADS"):
            opts.intra_op_num_threads = int(intra_threads or os.environ["FACESETS_ORT_THREADS"])
    return opts


# DirectML re-plans for every new shape and runs free dimensions slowly (onnxruntime #14550):
# there the recognition graph's batch is fixed to this by a free-dimension override and each
# photo's faces are padded to it (most photos hold 1-4 faces: usually one run per photo)
DML_REC_BATCH = 4


def fixed_batch_session(model_file: str, providers: list[str], batch: int, opts=None):
    """A session of ``model_file`` whose free batch dimension is fixed to ``batch`` (a
    free-dimension override by the dimension's name), or None when the graph's batch
    dimension is a number or unnamed (nothing to override)."""
    import onnxruntime

    probe = onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"])
    name = batch_dim_name(probe)
    if name is None:
        return None
    opts = opts or session_options(providers)
    opts.add_free_dimension_override_by_name(name, int(batch))
    return onnxruntime.InferenceSession(model_file, sess_options=opts, providers=providers)


# the packs InsightFace's model zoo serves as NAME.zip: only these are ever downloaded
ZOO_PACKS = ("antelopev2", "buffalo_l", "buffalo_m", "buffalo_s", "buffalo_sc")


def packs_under(root: str | os.PathLike) -> list[str]:
    """Names of the model packs (folders holding .onnx files) in ROOT/models/."""
    models = Path(root) / "models"
    try:
        return sorted(d.name for d in models.iterdir() if d.is_dir() and any(d.glob("*.onnx")))
    except OSError:
        return []


def _remove_new_empty_dirs(before: set[Path], top: Path) -> None:
    """Remove the folders a failed download created (empty ones only, deepest first)."""
    if not top.exists():
        return
    made = sorted((d for d in [top, *top.rglob("*")] if d.is_dir() and d not in before),
                  key=lambda d: len(d.parts), reverse=True)
    for d in made:
        for f in d.glob("*.zip"):   # a partly downloaded zip
            f.unlink(missing_ok=True)
        try:
            d.rmdir()
        except OSError:
            pass


def _existing_parents(path: Path) -> tuple[Path, set[Path]]:
    """The deepest existing folder above ``path`` and the folders below it now."""
    top = path
    while not top.exists() and top != top.parent:
        top = top.parent
    return top, {d for d in [top, *top.rglob("*")] if d.is_dir()} if top.is_dir() else set()


def resolve_pack_dir(name: str, root: str | None) -> Path:
    """Folder of the model pack: ``name`` itself if it is a folder, else ROOT/models/NAME.

    A missing pack of InsightFace's model zoo (ZOO_PACKS) is downloaded where a network is
    reachable, and a failed download leaves no folder behind; any other name is a typo or a
    private pack, and the BackendError lists the packs that ROOT does hold.
    """
    direct = Path(name).expanduser()
    if direct.is_dir():
        return direct.resolve()
    root = os.path.expanduser(root or DEFAULT_MODEL_ROOT)
    pack = Path(root) / "models" / name
    if pack.is_dir() and any(pack.glob("*.onnx")):
        return pack
    have = packs_under(root)
    listing = (f"packs in {Path(root) / 'models'}: {', '.join(have)}" if have else
               f"no pack in {Path(root) / 'models'}")
    nested = packs_under(Path(root).parent) if Path(root).name == "models" else []
    if nested:
        listing += (f"; --model-root names the folder that holds models/, here "
                    f"{Path(root).parent}")
    if name not in ZOO_PACKS:
        choose = "pass one of those, " if have else ""
        raise BackendError(f"model pack '{name}' not found in {pack} ({listing}); {choose}"
                           f"pass a pack of InsightFace's model zoo ({', '.join(ZOO_PACKS)}, "
                           "downloaded on first use) or --model /path/to/pack")
    hint = (f"model pack '{name}' not found in {pack} ({listing}); download {name}.zip from "
            f"InsightFace's model zoo and unzip it to {pack}, or pass --model-root DIR (the "
            "folder holding models/<name>/) or --model /path/to/pack")
    top, before = _existing_parents(pack)
    zip_path = pack.with_name(f"{name}.zip")
    had_zip = zip_path.exists()

    def clean() -> None:   # leave nothing of a failed download
        if not had_zip:
            zip_path.unlink(missing_ok=True)
        _remove_new_empty_dirs(before, top)
    try:
        from insightface.utils import ensure_available
    except ImportError:   # onnx_pack runs packs; fetching one is the insightface package's
        clean()
        raise BackendError(f"{hint} (face-sets downloads packs through the insightface "
                           "package, which is not installed: pip install --no-deps -r "
                           "requirements-insightface.txt)") from None
    try:
        got = Path(ensure_available("models", name, root=root))
    except Exception as exc:  # offline: requests' ConnectionError, or a bad zip
        clean()
        raise BackendError(f"{hint} (download failed: {type(exc).__name__})") from None
    if not any(got.glob("*.onnx")):
        clean()
        raise BackendError(hint)
    return got


def _scrfd_resize(height: int, width: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """The (width, height) InsightFace's SCRFD resizes an image to for ``input_size``."""
    im_ratio = float(height) / width
    if im_ratio > float(input_size[1]) / input_size[0]:
        return int(input_size[1] / im_ratio), input_size[1]
    return input_size[0], int(input_size[0] * im_ratio)


def fitted_det_input(height: int, width: int, det_size: int) -> tuple[int, int]:
    """The smallest detector input (width, height; multiples of the detector's largest
    stride, 32) at which SCRFD resizes the image exactly as for the square det_size input,
    so the padding shrinks and nothing else changes."""
    want = _scrfd_resize(height, width, (det_size, det_size))
    for extra in (0, 1):   # +1: float rounding could switch SCRFD's branch at an exact fit
        size = tuple(min(det_size, -(-(side + extra) // 32) * 32) for side in want)
        if _scrfd_resize(height, width, size) == want:
            return size
    return det_size, det_size


class InsightFaceBackend(FaceBackend):
    """FaceAnalysis with its models used one by one, so detection and recognition can run
    on different decode scales of one photo (see facesets.steps.embed)."""

    DEFAULT_MODEL = DEFAULT_MODEL
    DEFAULT_MODEL_ROOT = DEFAULT_MODEL_ROOT

    def __init__(self, model: str = DEFAULT_MODEL, model_root: str | None = None,
                 providers: str | list[str] | None = None, det_size: int = DEFAULT_DET_SIZE,
                 det_thresh: float = 0.5, with_recognition: bool = True,
                 intra_threads: int | None = None):
        pack = resolve_pack_dir(model, model_root)
        self.providers = best_providers(providers)
        allowed = None if with_recognition else ["detection", "landmark_2d_106",
                                                 "landmark_3d_68"]
        opts = session_options(self.providers, intra_threads)
        try:
            # the insightface package when installed (by hand: it asks for the GUI OpenCV),
            # else the pack's models run by onnx_pack (the same numbers)
            from insightface.app import FaceAnalysis
        except ImportError:
            FaceAnalysis = None
        try:
            if FaceAnalysis is None:
                models = onnx_pack.load_models(pack, self.providers, opts, allowed)
                assert "detection" in models
                models["detection"].prepare((det_size, det_size), det_thresh, self.providers,
                                            opts)
            else:
                app = FaceAnalysis(name=str(pack), root=model_root or DEFAULT_MODEL_ROOT,
                                   providers=self.providers, allowed_modules=allowed,
                                   sess_options=opts)
                ctx = 0 if self.providers[0] != "CPUExecutionProvider" else -1
                app.prepare(ctx_id=ctx, det_thresh=det_thresh, det_size=(det_size, det_size))
                models = app.models
        except AssertionError:
            raise BackendError(f"model pack {pack} has no face detection model; "
                               "point --model at a complete InsightFace pack") from None
        except Exception as exc:
            raise BackendError(f"model pack {pack} could not be loaded: {exc}") from None
        self.runner = "insightface" if FaceAnalysis is not None else "onnx_pack"
        self.pack_dir = pack
        self.name = pack.name if Path(model).expanduser().is_dir() else model
        self.det_size = det_size
        self.models = models      # task -> model: every session, for active_providers
        self.det = models["detection"]
        self.rec = models.get("recognition")
        if with_recognition and self.rec is None:
            raise BackendError(f"model pack {pack} has no recognition model; "
                               "point --model at a complete InsightFace pack")
        self.rec_batch = None   # the recognition graph's fixed batch, where it has one
        if self.rec is not None and self.providers[0] == "DmlExecutionProvider":
            self.fix_recognition_batch(DML_REC_BATCH, intra_threads)
        # On CPU a dynamic-shape detector runs on the photo's own aspect ratio instead of a
        # padded square (4:3: 640x480, ~30% less detection work, same scale, boxes within
        # ~0.7 px). GPU providers keep the one square shape they plan for.
        self.fit_det_input = (self.providers[0] == "CPUExecutionProvider"
                              and getattr(self.det, "static_input_size", True) is None)
        # run by onnx_pack either way (InsightFace's Landmark model, on the same session)
        self.landmark_models = [m if isinstance(m, onnx_pack.Landmarks)
                                else onnx_pack.Landmarks(m.session, m.model_file)
                                for t, m in models.items() if t.startswith("landmark")]
        self.has_landmarks = bool(self.landmark_models)
        if self.rec is not None:
            self.embedding_dim = int(self.rec.output_shape[1])
            self.model_id = f"{self.name}:{sha256_file(self.rec.model_file)[:12]}"
        else:
            self.embedding_dim = 0
            self.model_id = f"{self.name}:detection-only"

    def fix_recognition_batch(self, batch: int, intra_threads: int | None = None) -> bool:
        """Run recognition on a session whose batch dimension is fixed to ``batch`` (faces
        padded to it by ``embed``); False when the graph's batch cannot be overridden."""
        fixed = fixed_batch_session(self.rec.model_file, self.providers, batch,
                                    session_options(self.providers, intra_threads))
        if fixed is None:
            return False
        self.rec.session, self.rec_batch = fixed, int(batch)
        return True

    def active_providers(self) -> list[str]:
        seen: list[str] = []
        for model in self.models.values():
            session = getattr(model, "session", None)
            for p in (session.get_providers() if session is not None else []):
                if p not in seen:
                    seen.append(p)
        return seen

    def describe(self) -> dict:
        """The base meta plus ``pack_dir``: where the pack was loaded from, so commands that
        read the cache later load the same pack without --model / --model-root."""
        return dict(super().describe(), pack_dir=str(Path(self.pack_dir).resolve()))

    def detect(self, image):
        fitted = ({"input_size": fitted_det_input(image.shape[0], image.shape[1],
                                                  self.det_size)}
                  if self.fit_det_input else {})
        with inference_lock(self.providers):
            bboxes, kpss = self.det.detect(image, max_num=0, **fitted)
        faces = []
        for i in range(bboxes.shape[0]):
            faces.append(DetectedFace(
                bbox=bboxes[i, :4].astype(np.float32),
                kps=(kpss[i].astype(np.float32) if kpss is not None
                     else np.full((5, 2), np.nan, np.float32)),
                det_score=float(bboxes[i, 4])))
        return faces

    def embed(self, image, faces):
        if not faces:
            return
        size = self.rec.input_size[0]
        crops = [onnx_pack.norm_crop(image, f.kps, size) for f in faces]
        lock = inference_lock(self.providers)
        if self.rec_batch:   # DirectML, batch fixed by the override: padded to it
            with lock:
                feats = run_fixed_batches(np.stack(crops), self.rec_batch,
                                          lambda chunk: self.rec.get_feat(list(chunk)))
        elif self.providers[0] == "DmlExecutionProvider":
            # an unnamed batch dimension cannot be overridden: one face per run, one shape
            with lock:
                feats = np.concatenate([self.rec.get_feat([c]) for c in crops])
        else:
            with lock:
                feats = self.rec.get_feat(crops)  # one batched forward pass for all faces
        for f, e in zip(faces, feats):
            f.embedding = np.asarray(e, dtype=np.float32).reshape(-1)

    def landmarks(self, image, faces):
        for f in faces:
            for m in self.landmark_models:
                with inference_lock(self.providers):
                    points, pose = m.get(image, f.bbox)
                if m.taskname in ("landmark_2d_106", "landmark_3d_68"):  # DetectedFace's
                    setattr(f, m.taskname, np.asarray(points, np.float32))
                if pose is not None:
                    f.pose = pose
