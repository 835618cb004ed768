"""CLIP zero-shot occlusion scorer (``--scorer clip``): open_clip, torch.

Per attribute (mask, sunglasses by default) an ensemble of positive and negative prompts
(``occlusion_prompts.json`` beside this module, or the user's copy): each side's text
embeddings are L2-normalised, mean-pooled and L2-normalised again. An image's probability
for the attribute is the softmax over (positive, negative) of its cosine similarities with
the two ensemble embeddings times ``model.logit_scale.exp()``, the scale the model learned
(about 100 for a trained CLIP, 1/0.07 ~ 14.3 for an untrained one; without it every score is
about 0.5). ``ZeroShotHead`` is that computation as one torch module: the scorer runs it,
and ``occlusion export-onnx`` exports it (image tower + text embeddings + scale), so the
ONNX Runtime worker computes the same numbers without torch.

Weights: ``pretrained`` names open_clip's tag (from the Hugging Face hub, cached) or
``weights`` a local checkpoint file; ``pretrained=None`` and no file: random weights (tests,
benchmarks). ``model_config``: a JSON model config to register first (an architecture
open_clip does not ship; the file's stem is its name).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from ..runtime.program import program_name
from .base import FaceScorer, ScorerError
from .preprocess import to_chw

DEFAULT_MODEL = "ViT-L-14"
DEFAULT_PRETRAINED = "dfn2b_s39b"
PROMPTS_FILE = Path(__file__).with_name("occlusion_prompts.json")
PROMPTS_FORMAT = "face-sets/occlusion-prompts"


def load_prompts(path: str | os.PathLike | None = None) -> dict[str, dict[str, list[str]]]:
    """{attribute: {"positive": [...], "negative": [...]}} from the prompts file, checked:
    one error naming the file and the field."""
    path = Path(path or PROMPTS_FILE)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such prompts file") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON prompts file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != PROMPTS_FORMAT:
        raise ValueError(f"{path}: format is not {PROMPTS_FORMAT}")
    if not isinstance(data.get("version"), int) or data["version"] > 1:
        raise ValueError(f"{path}: version {data.get('version')!r} is not 1")
    attrs = data.get("attributes")
    if not isinstance(attrs, dict) or not attrs:
        raise ValueError(f"{path}: attributes is missing or empty")
    out = {}
    for name, sides in attrs.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{path}: attribute name {name!r} is not an identifier")
        if not isinstance(sides, dict):
            raise ValueError(f"{path}: attributes.{name} is not an object")
        for side in ("positive", "negative"):
            p = sides.get(side)
            if not isinstance(p, list) or not p or not all(
                    isinstance(s, str) and s.strip() and len(s) < 500 for s in p):
                raise ValueError(f"{path}: attributes.{name}.{side} is not a non-empty list "
                                 "of prompts")
        out[name] = {"positive": list(sides["positive"]), "negative": list(sides["negative"])}
    return out


def prompts_digest(prompts: dict) -> str:
    return hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()[:12]


def import_open_clip():
    """``import open_clip``. open_clip imports torchvision for its transforms; a torchvision
    wheel built for another torch variant (the CUDA wheel beside a CPU torch) cannot load its
    compiled ops and then fails on import ("operator torchvision::nms does not exist"). Its
    detection ops are not used here: the two op schemas it registers fake kernels for are
    declared, with a warning, and the import retried."""
    try:
        import open_clip
        return open_clip
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith(
            ("torchvision.", "open_clip"))]:
        del sys.modules[name]
    global _TV_SHIM
    if _TV_SHIM is None:
        _TV_SHIM = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            if not hasattr(torch.ops.torchvision, op) or op not in dir(torch.ops.torchvision):
                try:
                    _TV_SHIM.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) "
                                    "-> Tensor")
                except RuntimeError:
                    pass
    print("warning: torchvision's compiled ops do not match this torch build (another "
          "variant, e.g. CUDA beside a CPU torch); open_clip needs none of them, only "
          "torchvision's Python transforms", file=sys.stderr)
    import open_clip
    return open_clip


_TV_SHIM = None

HUB_PROBE_S = 3.0    # a TCP connect to the hub (or the proxy) that takes longer: offline


def hub_unreachable() -> str:
    """Why the Hugging Face hub cannot be used ('' when it can): HF_HUB_OFFLINE is set, or
    the hub's host (the proxy's, when one is set) does not take a TCP connection within
    ``HUB_PROBE_S``. Offline, huggingface_hub retries for about a minute and prints dozens
    of warnings before it fails; this answers in seconds."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy if proxy else endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return ""
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_S).close()
    except OSError as exc:
        return f"{host}:{port} cannot be reached: {exc}"
    return ""


def _in_hub_cache(open_clip, model: str, tag: str) -> bool:
    """Whether the weights open_clip would fetch from the hub for (model, tag) are in the
    local cache; True when they do not come from the hub (open_clip decides then)."""
    try:
        cfg = open_clip.get_pretrained_cfg(model, tag) or {}
        from huggingface_hub import try_to_load_from_cache
    except Exception:   # an open_clip or hub version without these: let open_clip try
        return True
    repo = str(cfg.get("hf_hub") or "").strip("/")
    if not repo:
        return True
    names = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)


def _go_offline() -> None:
    """Make huggingface_hub use its local cache only (also when it is imported already)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:
        return
    hub_constants.HF_HUB_OFFLINE = True


def _zero_shot_head():
    import torch

    class ZeroShotHead(torch.nn.Module):
        """pixels (N x 3 x S x S, normalised) -> probability per attribute (N x A)."""

        def __init__(self, visual, text: torch.Tensor, logit_scale: float):
            super().__init__()
            self.visual = visual
            # rows: attribute 0 positive, attribute 0 negative, attribute 1 positive...
            self.register_buffer("text", text.detach().clone().float())
            self.register_buffer("scale", torch.tensor(float(logit_scale)))

        def forward(self, pixels):
            feats = self.visual(pixels)
            if isinstance(feats, (tuple, list)):
                feats = feats[0]
            feats = feats / feats.norm(dim=-1, keepdim=True)
            logits = self.scale * (feats @ self.text.t())        # N x 2A
            pair = logits.reshape(logits.shape[0], -1, 2)        # N x A x (pos, neg)
            return torch.softmax(pair, dim=-1)[..., 0]

    return ZeroShotHead


def _half_head():
    import torch

    class HalfHead(torch.nn.Module):
        """A float16 head behind float32 input and output (casts at both ends)."""

        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, pixels):
            return self.head(pixels.half()).float()

    return HalfHead


class ClipScorer(FaceScorer):
    """open_clip zero-shot scorer (see the module docstring)."""

    def __init__(self, model: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
                 weights: str | None = None, prompts: str | None = None,
                 model_config: str | None = None, device: str = "cpu", batch_size: int = 16,
                 threads: int | None = None, fp16: bool = False):
        offline = ""
        if pretrained and not weights:
            offline = hub_unreachable()
            if offline:
                _go_offline()
        try:
            import torch
            open_clip = import_open_clip()
        except ImportError as exc:
            raise ScorerError(f"the clip scorer needs torch and open_clip ({exc}); install "
                              "requirements-clip.txt, or export the model to ONNX elsewhere "
                              "and use --scorer onnx:FILE") from None
        if threads:
            torch.set_num_threads(int(threads))
        if model_config:
            cfg = Path(model_config)
            if not cfg.is_file():
                raise FileNotFoundError(f"{cfg}: no such model config")
            open_clip.add_model_config(cfg)
            model = model if model != DEFAULT_MODEL else cfg.stem
        if weights:
            if not Path(weights).is_file():
                raise FileNotFoundError(f"{weights}: no such weights file")
            source = str(weights)
        else:
            source = pretrained or None
        if offline:
            _go_offline()   # open_clip's import may have imported huggingface_hub just now
            if not _in_hub_cache(open_clip, model, source):
                raise self._offline_error(model, source, offline)
        try:
            net, _, _ = open_clip.create_model_and_transforms(model, pretrained=source,
                                                              device=device)
        except Exception as exc:   # open_clip's, torch's and huggingface_hub's own errors
            if offline and not weights:
                raise self._offline_error(model, source, offline) from None
            if not isinstance(exc, (RuntimeError, OSError, ValueError)):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ScorerError(f"open_clip cannot build {model} with weights {source!r}: "
                              f"{first[:500]}; for weights on disk pass --weights FILE"
                              ) from None
        net.eval()
        self.torch, self.device, self.fp16 = torch, device, bool(fp16)
        self.model_name, self.pretrained = model, (Path(weights).name if weights else source)
        self.prompts = load_prompts(prompts)
        self.attributes = tuple(self.prompts)
        self.batch_size = int(batch_size)
        self.name = f"clip:{model}/{self.pretrained or 'random'}"
        cfg = net.visual.preprocess_cfg
        size = cfg["size"]
        self.size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean, self.std = list(cfg["mean"]), list(cfg["std"])
        self.interpolation = cfg.get("interpolation", "bicubic")
        tokenizer = open_clip.get_tokenizer(model)
        with torch.no_grad():
            rows = []
            for attr in self.attributes:
                for side in ("positive", "negative"):
                    emb = net.encode_text(tokenizer(self.prompts[attr][side]).to(device))
                    emb = emb / emb.norm(dim=-1, keepdim=True)
                    mean = emb.mean(dim=0)
                    rows.append(mean / mean.norm())
            self.text = torch.stack(rows)
            self.logit_scale = float(net.logit_scale.exp().item())
        self.head = _zero_shot_head()(net.visual, self.text, self.logit_scale).eval()

    @staticmethod
    def _offline_error(model: str, tag: str, why: str) -> ScorerError:
        return ScorerError(
            f"clip: the {model} weights {tag!r} are not in the Hugging Face cache and the hub "
            f"cannot be used ({why}); pass --weights FILE (a local open_clip checkpoint), or "
            f"run `{program_name()} occlusion export-onnx` where the weights are and score with "
            "--scorer onnx:FILE")

    def describe(self) -> dict:
        return {"scorer": self.name, "model": self.model_name, "pretrained": self.pretrained,
                "logit_scale": round(self.logit_scale, 4), "image_size": self.size,
                "prompts": prompts_digest(self.prompts)}

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return to_chw(image, self.size, self.mean, self.std, self.interpolation)

    def pixels(self, images: list[np.ndarray]) -> np.ndarray:
        return np.stack([self.prepare(im) for im in images])

    def providers(self) -> list[str]:
        where = next(self.head.parameters()).device
        return [f"torch:{where.type}" + (" fp16" if self.fp16 else "")]

    def warm_up(self) -> None:
        if self.torch.device(self.device).type != "cpu":
            self.run(np.zeros((self.batch_size, 3, self.size, self.size), np.float32))

    def requested_providers(self) -> list[str]:
        kind = self.torch.device(self.device).type
        return [f"torch:{kind}" + (" fp16" if self.fp16 else "")]

    def run(self, pixels: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.no_grad():
            batch = torch.from_numpy(pixels).to(self.device, non_blocking=True)
            if self.fp16:
                with torch.autocast(device_type=torch.device(self.device).type,
                                    dtype=torch.float16):
                    probs = self.head(batch)
            else:
                probs = self.head(batch)
            return probs.float().cpu().numpy()

    def score_prepared(self, prepared: list[np.ndarray]) -> list[dict[str, float]]:
        if not prepared:
            return []
        probs = self.run(np.stack(prepared))
        return [{a: float(p[i]) for i, a in enumerate(self.attributes)} for p in probs]

    def export_onnx(self, path: str | os.PathLike, opset: int = 17, fp16: bool = False) -> dict:
        """Write the head (image tower + text embeddings + logit scale) as one ONNX graph
        whose output is the probability per attribute; returns its metadata. ``fp16``: the
        weights and the computation in float16 (about half the file), input and output
        still float32 (the graph casts), so a worker feeds it the same arrays."""
        import copy

        import onnx

        from ..io.fsutil import atomic_write_bytes
        from .onnx_classifier import CLIP_GRAPH_FORMAT, CLIP_GRAPH_VERSION, META_KEY

        path = Path(path)
        dummy = self.torch.zeros(2, 3, self.size, self.size, device=self.device)
        tmp = path.with_name(f".{path.name}.export")
        # nn.MultiheadAttention's inference fast path is one fused op ONNX has no
        # translation for; the export traces the plain (same numbers) implementation
        mha = self.torch.backends.mha
        fast = mha.get_fastpath_enabled()
        mha.set_fastpath_enabled(False)
        head = self.head
        if fp16:
            head = _half_head()(copy.deepcopy(self.head).half()).eval()
        try:
            with self.torch.no_grad():
                self.torch.onnx.export(head, (dummy,), str(tmp), dynamo=False,
                                       input_names=["pixels"], output_names=["probs"],
                                       dynamic_axes={"pixels": {0: "n"}, "probs": {0: "n"}},
                                       opset_version=opset, do_constant_folding=True)
            model = onnx.load(str(tmp))
        except Exception as exc:   # the exporter's own error types, with the whole graph
            raise ScorerError(f"ONNX export of {self.name} failed: "
                              f"{str(exc).splitlines()[-1][:300]}") from None
        finally:
            mha.set_fastpath_enabled(fast)
            tmp.unlink(missing_ok=True)
        meta = {"format": CLIP_GRAPH_FORMAT, "version": CLIP_GRAPH_VERSION, "name": self.name,
                "model": self.model_name, "pretrained": self.pretrained,
                "attributes": list(self.attributes), "image_size": self.size,
                "mean": self.mean, "std": self.std, "interpolation": self.interpolation,
                "logit_scale": self.logit_scale, "prompts": self.prompts,
                "prompts_digest": prompts_digest(self.prompts),
                "precision": "fp16" if fp16 else "fp32"}
        entry = model.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(meta, allow_nan=False)
        atomic_write_bytes(path, model.SerializeToString())
        return meta
