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

from .base import FaceScorer, ScorerError
from .preprocess import to_tensor

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


class ClipScorer(FaceScorer):
    """open_clip zero-shot scorer (see the module docstring)."""

    def __init__(self, model: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
                 weights: str | None = None, prompts: str | None = None,
                 model_config: str | None = None, device: str = "cpu", batch_size: int = 16,
                 threads: int | None = None):
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
        try:
            net, _, _ = open_clip.create_model_and_transforms(model, pretrained=source,
                                                              device=device)
        except RuntimeError as exc:
            raise ScorerError(f"open_clip cannot build {model} with weights {source!r}: "
                              f"{str(exc).splitlines()[0][:300]}") from None
        net.eval()
        self.torch, self.device = torch, device
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

    def describe(self) -> dict:
        return {"scorer": self.name, "model": self.model_name, "pretrained": self.pretrained,
                "logit_scale": round(self.logit_scale, 4), "image_size": self.size,
                "prompts": prompts_digest(self.prompts)}

    def pixels(self, images: list[np.ndarray]) -> np.ndarray:
        return to_tensor(images, self.size, self.mean, self.std, self.interpolation)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.head(self.torch.from_numpy(pixels).to(self.device)).cpu().numpy()

    def score(self, images: list[np.ndarray]) -> list[dict[str, float]]:
        if not images:
            return []
        probs = self.run(self.pixels(images))
        return [{a: float(p[i]) for i, a in enumerate(self.attributes)} for p in probs]

    def export_onnx(self, path: str | os.PathLike, opset: int = 17) -> dict:
        """Write the head (image tower + text embeddings + logit scale) as one ONNX graph
        whose output is the probability per attribute; returns its metadata."""
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
        try:
            with self.torch.no_grad():
                self.torch.onnx.export(self.head, (dummy,), str(tmp), dynamo=False,
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
                "prompts_digest": prompts_digest(self.prompts)}
        entry = model.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(meta, allow_nan=False)
        atomic_write_bytes(path, model.SerializeToString())
        return meta
