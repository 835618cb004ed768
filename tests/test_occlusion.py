"""The occlusion filter: scorers (open_clip zero-shot on a tiny random model, an ONNX
classifier the tests build), its files, and the whole path on a real export of the test
photos: stage -> worker (killed with kill -9, resumed) -> merge -> report (headless
Chromium) -> apply -> undo, with every manifest checked against the files on disk."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import LOW_GATES, PACK, ROOT, TEST_THRESHOLD, run_cli
from library_check import check_library
from onnx_models import expected_occluded, occlusion_classifier

CLIP_WORKER = ROOT / "work" / "clip_worker.py"
# a ViT small enough to build in a second: open_clip's own code, random weights
TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                       "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 2}}


# ---- pure logic ------------------------------------------------------------------------------
@pytest.mark.unit
def test_verdict_rules():
    from facesets.core.occlusion import verdict_of

    assert verdict_of(10, 4, 0.4, 5) == "masked"          # 40% flagged: the whole faceset
    assert verdict_of(10, 3, 0.4, 5) == "prune"           # 30%: its flagged PNGs only
    assert verdict_of(6, 2, 0.4, 5) == "thin"             # 4 left after pruning
    assert verdict_of(3, 0, 0.4, 5) == "keep"             # small, nothing pruned: stays
    assert verdict_of(0, 0, 0.4, 5) == "keep"


@pytest.mark.unit
def test_classifier_output_is_the_softmax_of_known_logits(tmp_path):
    from facesets.scorers import scorer_from_spec

    scorer = scorer_from_spec(f"onnx:{occlusion_classifier(tmp_path / 'c.onnx')}")
    assert scorer.kind == "classifier" and scorer.attributes == ("occluded",)
    colours = [(0, 0, 0), (200, 150, 120), (90, 90, 90), (255, 255, 255)]
    got = scorer.score([np.full((300, 200, 3), c, np.uint8) for c in colours])
    for c, g in zip(colours, got):
        assert g["occluded"] == pytest.approx(expected_occluded(c), abs=1e-4)
    assert got[0]["occluded"] > 0.95 and got[1]["occluded"] < 0.01


@pytest.mark.unit
def test_cpu_fallback_is_loud(capsys):
    from facesets.scorers.onnx_classifier import warn_cpu_fallback

    assert warn_cpu_fallback(["CUDAExecutionProvider", "CPUExecutionProvider"],
                             ["CPUExecutionProvider"], "m.onnx")
    assert "FELL BACK TO THE CPU" in capsys.readouterr().err
    assert not warn_cpu_fallback(["CPUExecutionProvider"], ["CPUExecutionProvider"], "m.onnx")
    assert not warn_cpu_fallback(["CUDAExecutionProvider"], ["CUDAExecutionProvider"], "m")


@pytest.mark.unit
def test_prompt_file_names_the_known_false_positives(tmp_path):
    from facesets.scorers.clip import load_prompts

    prompts = load_prompts()
    assert set(prompts) == {"mask", "sunglasses"}
    for sides in prompts.values():
        assert 5 <= len(sides["positive"]) <= 6 and 5 <= len(sides["negative"]) <= 6
    negatives = " ".join(prompts["sunglasses"]["negative"])
    for known in ("forehead", "on top of the head", "clear prescription glasses"):
        assert known in negatives
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"format": "face-sets/occlusion-prompts", "version": 1,
                               "attributes": {"mask": {"positive": [], "negative": ["x"]}}}))
    with pytest.raises(ValueError, match=r"p.json: attributes.mask.positive"):
        load_prompts(bad)


@pytest.mark.unit
def test_scores_and_results_readers_name_file_and_field(tmp_path):
    from facesets.formats.occlusion import ScoresError, load_scores, new_scores, write_scores
    from facesets.formats.queue import (QueueError, new_queue, validate_occlusion_results,
                                        validate_queue)

    face = {"file": "faces/000.png", "key": "k", "sha256": "a" * 64, "scores": {"mask": 0.9}}
    doc = new_scores("/x/swap", None, "/q.json", ["/r"], ["clip:t"], {"faceset_000": [face]},
                     [], [])
    write_scores(tmp_path / "s.json", doc)
    assert load_scores(tmp_path / "s.json")["attributes"] == ["mask"]
    for field, value in (("scores", {"mask": 1.5}), ("file", "../evil.png"),
                         ("sha256", "nope")):
        broken = json.loads(json.dumps(doc))
        broken["facesets"]["faceset_000"][0][field] = value
        (tmp_path / "b.json").write_text(json.dumps(broken))
        with pytest.raises(ScoresError, match=rf"b.json: facesets.faceset_000\[0\].{field}"):
            load_scores(tmp_path / "b.json")
    item = {"id": "faceset_000/faces/000.png", "path": "/x/swap/faceset_000/faces/000.png",
            "faceset": "faceset_000", "file": "faces/000.png", "key": "k", "size": 1,
            "sha256": "a" * 64}
    q = validate_queue(new_queue("occlusion", {"export": "/x/swap"}, [item]), "q.json")
    good = {"id": item["id"], "path": item["path"], "sha256": "a" * 64, "scorer": "s",
            "scores": {"occluded": 0.2}}
    validate_occlusion_results([good, {"id": item["id"], "path": item["path"],
                                       "error": "unreadable"}], q, "r.jsonl")
    for change, field in (({"scores": {"occluded": math.nan}}, "scores.occluded"),
                          ({"sha256": "b" * 64}, "sha256"), ({"id": "other"}, "id")):
        with pytest.raises(QueueError, match=rf"r.jsonl: record 1 {field}"):
            validate_occlusion_results([dict(good, **change)], q, "r.jsonl")
    with pytest.raises(QueueError, match="items.0..path"):
        validate_queue(new_queue("occlusion", {"export": "/x/swap"},
                                 [dict(item, path="/elsewhere/a.png")]), "q.json")


# ---- CLIP zero-shot on open_clip (random tiny model: no weights to download) ------------------
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny open_clip config and two checkpoints of one random model: logit scale 50 and
    logit scale 1 (exp of the stored log-scale)."""
    from facesets.scorers.clip import import_open_clip

    open_clip = import_open_clip()
    import torch

    root = tmp_path_factory.mktemp("tiny_clip")
    config = root / "occl-tiny-vit.json"
    config.write_text(json.dumps(TINY))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("occl-tiny-vit", pretrained=None)
    weights = {}
    for scale in (50.0, 1.0):
        with torch.no_grad():
            model.logit_scale.fill_(math.log(scale))
        weights[scale] = root / f"scale{scale:g}.pt"
        torch.save(model.state_dict(), weights[scale])
    return config, weights


def test_clip_scores_are_the_softmax_of_scaled_ensemble_similarities(tiny_clip, tmp_path):
    import torch

    from facesets.scorers import scorer_from_spec
    from facesets.scorers.clip import import_open_clip

    config, weights = tiny_clip
    scorer = scorer_from_spec("clip", {"model_config": str(config), "pretrained": None,
                                       "weights": str(weights[50.0])})
    assert scorer.logit_scale == pytest.approx(50.0, rel=1e-5)   # read from the model
    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(5)]
    got = scorer.score(crops)
    # the same numbers computed here, straight from open_clip: each prompt's embedding
    # normalised, each side mean-pooled and normalised, cosine x 50, softmax per attribute
    open_clip = import_open_clip()
    model = open_clip.create_model("occl-tiny-vit", pretrained=str(weights[50.0])).eval()
    tok = open_clip.get_tokenizer("occl-tiny-vit")
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(scorer.pixels(crops)))
        img = img / img.norm(dim=-1, keepdim=True)
        for attr, sides in scorer.prompts.items():
            sims = []
            for side in ("positive", "negative"):
                t = model.encode_text(tok(sides[side]))
                t = (t / t.norm(dim=-1, keepdim=True)).mean(0)
                sims.append(img @ (t / t.norm()))
            want = torch.softmax(50.0 * torch.stack(sims, 1), 1)[:, 0].numpy()
            assert [g[attr] for g in got] == pytest.approx(want.tolist(), abs=1e-5)
    spread = max(abs(g[a] - 0.5) for g in got for a in g)
    assert spread > 0.05, "with the model's scale the scores are not all ~0.5"
    # the ONNX graph (image tower + text embeddings + scale) gives the same scores
    meta = scorer.export_onnx(tmp_path / "tiny.onnx")
    assert meta["logit_scale"] == pytest.approx(50.0, rel=1e-5)
    onnx_scorer = scorer_from_spec(f"onnx:{tmp_path / 'tiny.onnx'}")
    assert onnx_scorer.kind == "clip" and onnx_scorer.attributes == ("mask", "sunglasses")
    ort = onnx_scorer.score(crops)
    assert max(abs(a[k] - b[k]) for a, b in zip(got, ort) for k in a) < 1e-3
    # the fp16 graph: weights in float16 (a smaller file), float32 in and out, scores close
    meta16 = scorer.export_onnx(tmp_path / "tiny16.onnx", fp16=True)
    assert meta16["precision"] == "fp16" and meta["precision"] == "fp32"
    assert (tmp_path / "tiny16.onnx").stat().st_size < \
        0.7 * (tmp_path / "tiny.onnx").stat().st_size
    half = scorer_from_spec(f"onnx:{tmp_path / 'tiny16.onnx'}")
    assert half.session.get_inputs()[0].type == "tensor(float)"
    ort16 = half.score(crops)
    assert max(abs(a[k] - b[k]) for a, b in zip(got, ort16) for k in a) < 2e-2


# ---- the whole path on a real export ----------------------------------------------------------
PAINT = {"faceset_000": [1, 4],           # 2 of 10: pruned
         "faceset_001": [0, 2, 3, 5],     # 4 of 10 = 40%: the faceset goes to _masked/
         "faceset_002": [0, 3]}           # 2 of 6: pruned, 4 left: to _thin/
# faceset_003 (4 faces, nothing painted) is small but stays: nothing was pruned from it


@pytest.fixture(scope="module")
def painted_export(faces_cache, tmp_path_factory) -> Path:
    """export-swap of four facesets of the test photos (10, 10, 6 and 4 faces), with a black
    band painted over the lower half of some face PNGs (bundles rebuilt). Read-only."""
    from PIL import Image

    from facesets.formats.swapset import rebuild_bundles

    root = tmp_path_factory.mktemp("occlusion")
    run_cli("refine", faces_cache, root / "refined", "--initial-threshold", TEST_THRESHOLD,
            "--merge-threshold", "0.5", "--outlier-threshold", TEST_THRESHOLD,
            "--min-faces", "4", *LOW_GATES, "--link", "symlink")
    m = json.loads((root / "refined" / "refine_manifest.json").read_text())
    big = [f for f in m["facesets"] if len(f["faces"]) >= 10]
    picked = [big[0], big[1], dict(big[2], faces=big[2]["faces"][:6]),
              dict(big[3], faces=big[3]["faces"][:4])]
    m["facesets"] = [dict(f, name=f"faceset_{i:03d}", face_count=len(f["faces"]))
                     for i, f in enumerate(picked)]
    (root / "four.json").write_text(json.dumps(m))
    out = root / "swap"
    run_cli("export-swap", faces_cache, root / "four.json", out, "--swap-outlier-threshold",
            TEST_THRESHOLD, "--min-face-short", "20", *PACK, "--no-progress")
    for name, ranks in PAINT.items():
        for r in ranks:
            png = out / name / "faces" / f"{r:03d}.png"
            pixels = np.asarray(Image.open(png).convert("RGB")).copy()
            pixels[pixels.shape[0] // 2:] = 0
            Image.fromarray(pixels).save(png)
        rebuild_bundles(out / name)
    run_cli("report", out)   # the page shows the painted faces, as after any hand edit
    return out


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".runs" not in
            p.relative_to(root).parts}


def kill_worker_midway(queue: Path, results: Path, *extra) -> int:
    """Start the worker, SIGKILL it once its first records are durable; records left."""
    proc = subprocess.Popen([sys.executable, str(CLIP_WORKER), str(queue), str(results),
                             "--no-progress", *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if results.is_file() and results.read_bytes().count(b"\n") >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    return results.read_bytes().count(b"\n")


def test_stage_worker_killed_merge_report_apply_undo(painted_export, tiny_clip, faces_cache,
                                                     tmp_path):
    out = tmp_path / "swap"
    shutil.copytree(painted_export, out)
    check_library(out)
    before = tree(out)
    cls = occlusion_classifier(tmp_path / "classifier.onnx")
    q, r1, r2 = tmp_path / "q.json", tmp_path / "cls.jsonl", tmp_path / "clip.jsonl"
    run_cli("occlusion", "stage", out, q)
    assert len(json.loads(q.read_text())["items"]) == 30

    # the worker, killed with kill -9 after its first flush, then resumed by the same command
    done = kill_worker_midway(q, r1, "--scorer", f"onnx:{cls}", "--flush-every", "2",
                              "--batch-size", "2")
    assert 2 <= done < 30
    with open(r1, "ab") as fh:
        fh.write(b'{"id": "faceset_000/fa')       # a write the kill cut short
    # resumed with the old spelling: --batch still means both windows, with one warning
    res = subprocess.run([sys.executable, str(CLIP_WORKER), q, r1, "--no-progress",
                          "--scorer", f"onnx:{cls}", "--batch", "2"],
                         capture_output=True, text=True, check=True)
    assert f"already done {done}" in res.stdout and f"done now {30 - done}" in res.stdout
    warned = [line for line in res.stderr.splitlines() if "deprecated" in line]
    assert len(warned) == 1 and "--flush-every" in warned[0] and "--batch-size" in warned[0]
    # a second scorer: the tiny CLIP exported to ONNX (logit scale 1: every score ~0.5),
    # scored in-process through the same job loop
    onnx_clip = tmp_path / "clip.onnx"
    exp = run_cli("occlusion", "export-onnx", onnx_clip, "--model-config", tiny_clip[0],
                  "--pretrained", "none", "--weights", tiny_clip[1][1.0], "--check", "4")
    assert "max abs score difference" in exp.stdout and "logit scale 1.0000" in exp.stdout
    run_cli("occlusion", "score", q, r2, "--scorer", f"onnx:{onnx_clip}", "--no-progress")

    scores = tmp_path / "scores.json"
    run_cli("occlusion", "merge", r1, r2, scores)
    doc = json.loads(scores.read_text())
    assert doc["attributes"] == ["mask", "occluded", "sunglasses"] and not doc["unscored"]
    flagged = {(n, f["file"]) for n, faces in doc["facesets"].items() for f in faces
               if f["scores"]["occluded"] >= 0.7}
    assert flagged == {(n, f"faces/{r:03d}.png") for n, ranks in PAINT.items() for r in ranks}
    assert all(0.3 < f["scores"][a] < 0.7 for faces in doc["facesets"].values()
               for f in faces for a in ("mask", "sunglasses"))

    report = tmp_path / "report"
    run_cli("occlusion", "report", scores, report, "--no-progress")
    page = (report / "faceset_001.html").read_text()
    assert page.count("FLAGGED") == 4 and "quarantine to _masked/" in page
    assert "http" not in page.replace('href="index.html"', "")
    chromium = shutil.which("chromium")
    if chromium:
        shot = tmp_path / "faceset_001.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--window-size=1000,900", f"--screenshot={shot}",
                        (report / "faceset_001.html").as_uri()],
                       capture_output=True, timeout=120, check=True)
        from PIL import Image
        px = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
        red_border = (px[:, 0] > 200) & (px[:, 1] < 60) & (px[:, 2] < 60)
        assert red_border.sum() > 2000, "flagged cards are drawn with a red border"
        assert (px.sum(axis=1) < 30).sum() > 20000, "the thumbnails (black bands) show"

    # a tampered scores file is one error line naming the file and field; nothing changes
    broken = json.loads(scores.read_text())
    broken["facesets"]["faceset_000"][0]["scores"]["occluded"] = 1.5
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    bad = run_cli("occlusion", "apply", tmp_path / "broken.json", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and \
        "broken.json: facesets.faceset_000[0].scores.occluded" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and tree(out) == before

    dry = run_cli("occlusion", "apply", scores, "--dry-run")
    assert "nothing changed" in dry.stdout and tree(out) == before
    plan = json.loads((tmp_path / "scores.json.plan.json").read_text())
    assert {f["name"]: f["verdict"] for f in plan["facesets"]} == {
        "faceset_000": "prune", "faceset_001": "masked", "faceset_002": "thin",
        "faceset_003": "keep"}

    run_cli("occlusion", "apply", scores)
    check_library(out)
    top = json.loads((out / "manifest.json").read_text())
    assert [e["name"] for e in top["facesets"]] == ["faceset_000", "faceset_003"]
    assert [m["name"] for m in top["masked"]] == ["faceset_001"]
    assert [t["name"] for t in top["thin_eras"]] == ["faceset_002"]
    assert top["thin_eras"][0]["survivors"] == 4
    assert top["occlusion_filter_run"]["counts"]["pruned_pngs"] == 4
    assert (out / "_masked" / "faceset_001" / "faces" / "000.png").is_file()
    kept = json.loads((out / "faceset_000" / "manifest.json").read_text())
    assert len(kept["faces"]) == 8 and kept["bundles"]["top_count"] == 8
    assert {d["moved_to"] for d in kept["dropped"]} == {"faces/_dropped/001.png",
                                                         "faces/_dropped/004.png"}
    # previews/top_grid.jpg shows the faces left, no longer the pruned ones (tiles compared
    # with their PNGs); the undo below brings the old grid back byte for byte
    from test_pages_overview import SAME_FACE, nearest_tile
    grid = out / "faceset_000" / "previews" / "top_grid.jpg"
    for d in kept["dropped"]:
        assert nearest_tile(grid, out / "faceset_000" / d["moved_to"]) > 2 * SAME_FACE
    assert all(nearest_tile(grid, out / "faceset_000" / f["file"]) < SAME_FACE
               for f in kept["faces"] if f["rank"] < kept["top_n"])
    thin = json.loads((out / "_thin" / "faceset_002" / "manifest.json").read_text())
    assert len(thin["faces"]) == 4 and thin["quarantined"]["to"] == "_thin"
    assert run_cli("occlusion", "apply", scores).stdout.count("nothing changed") == 1

    run_cli("undo", out)
    check_library(out)
    after = tree(out)
    assert after.pop("manifest.json") != before.pop("manifest.json")   # runs[] names both
    assert after == before, "undo puts every file back as it was"
    top = json.loads((out / "manifest.json").read_text())
    assert [e["name"] for e in top["facesets"]] == [f"faceset_{i:03d}" for i in range(4)]
    assert top["masked"] == [] and top["thin_eras"] == [] and "occlusion_filter_run" not in top
    assert [e["step"] for e in top["runs"]] == ["occlusion", "undo"]

    # the scores feed export-swap: the faces scored occluded never reach a bundle
    again = tmp_path / "again"
    run_cli("export-swap", faces_cache, painted_export.parent / "four.json", again,
            "--swap-outlier-threshold", TEST_THRESHOLD, "--min-face-short", "20", *PACK,
            "--no-progress", "--occlusion-scores", scores)
    occluded = {f["key"] for n, faces in doc["facesets"].items() for f in faces
                if f["scores"]["occluded"] >= 0.7}
    for name in ("faceset_000", "faceset_001", "faceset_002", "faceset_003"):
        m = json.loads((again / name / "manifest.json").read_text())
        assert not occluded & {f["key"] for f in m["faces"]}
        dropped = {d["key"] for d in m["dropped"] if d["reason"] == "occluded"}
        assert dropped == occluded & {f["key"] for f in doc["facesets"][name]}
