"""Hostile queues and results: every queue item must lie under the folder it was staged from,
every field has its type, and tampered worker results are refused whole before anything is
written (the cache stays byte for byte as it was). Workers run as real subprocesses."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FACES, PACK, TEST_THRESHOLD, run_cli
from test_audit import export_dir, run_worker as run_multiface_worker  # noqa: F401
from test_audit import WORKER as MULTIFACE_WORKER
from test_worker import run_worker
from facesets.formats.cache import list_segments, load_cache


def one_line_error(proc, *needles: str) -> str:
    """A refusal: exit 2, one `error:` line on stderr naming what it must, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes (the cache, its segments, its lock state)."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _photos(n: int) -> list[Path]:
    return [f for person in sorted(FACES.iterdir())[:n] for f in sorted(person.iterdir())[:1]]


# ---- embed queue: items under the staged root, typed params ------------------------------
@pytest.fixture
def staged(tmp_path):
    """A 128-D cache that knows one photo of SRC, then two more photos staged into a queue."""
    src = tmp_path / "photos"
    src.mkdir()
    first, *rest = _photos(3)
    shutil.copy2(first, src / "a.jpg")
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    cache = cache_dir / "c.npz"
    run_cli("embed", src, cache, *PACK, "--no-progress")
    for i, f in enumerate(rest):
        shutil.copy2(f, src / f"b{i}.jpg")
    shutil.copy2(rest[0], src / "copy of b0.jpg")   # an alias
    queue = tmp_path / "q.json"
    run_cli("embed", src, cache, "--stage-queue", queue, *PACK, "--no-progress")
    return src, cache, queue


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _alias_item(doc) -> dict:
    return next(it for it in doc["items"] if it["aliases"])


@pytest.mark.parametrize("change, needles", [
    (lambda d: _alias_item(d)["aliases"].__setitem__(
        0, {"path": "/etc/passwd", "size": 10, "mtime_ns": 1}),
     ["aliases[0]", "'/etc/passwd' is not under a staged root"]),
    (lambda d: d["items"][0].__setitem__("path", "photos/b0.jpg"),
     ["items[0].path", "not an absolute path"]),
    (lambda d: d["items"][0].__setitem__("path", d["params"]["src"] + "/../../etc/passwd"),
     ["items[0].path", "'..' component"]),
    (lambda d: d["params"].__setitem__("det_size", [640]), ["params.det_size", "[640]"]),
    (lambda d: d["params"].__setitem__("max_pixels", "many"), ["params.max_pixels"]),
    (lambda d: d["items"][1].__setitem__("size", "12"), ["items[1].size"]),
    (lambda d: d["items"][0].__setitem__("aliases", {"path": "/x"}), ["aliases", "not a list"]),
    (lambda d: d["items"][0].__setitem__("sha256", "../" * 5), ["items[0].sha256"]),
    (lambda d: d.__setitem__("params", []), ["params"]),
])
def test_embed_worker_refuses_a_bad_queue_in_one_line(staged, tmp_path, change, needles):
    _src, _cache, queue = staged
    _edit(queue, change)
    out = tmp_path / "out"
    proc = run_worker(queue, out, check=False)
    one_line_error(proc, str(queue), *needles)
    assert not out.exists(), "nothing written for a refused queue"
    # the CLI's own reader (audit apply, merge) says the same through load_queue
    from facesets.formats.queue import QueueError, load_queue
    with pytest.raises(QueueError):
        load_queue(queue)


def test_merge_checks_the_queue_copy_and_its_root(staged, tmp_path):
    src, cache, queue = staged
    out = tmp_path / "out"
    run_worker(queue, out)
    copy = out / "queue.json"
    assert json.loads(copy.read_text()) == json.loads(queue.read_text())
    before = snapshot(cache.parent)

    pristine = copy.read_text()
    _edit(copy, lambda d: _alias_item(d)["aliases"].append(
        {"path": "/etc/passwd", "size": 1, "mtime_ns": 1}))
    proc = run_cli("embed", cache, "--merge-results", out, check=False)
    one_line_error(proc, str(copy), "'/etc/passwd' is not under a staged root")
    # a root widened to "/" lets the alias through the queue check, not into this cache
    _edit(copy, lambda d: d["params"].__setitem__("src", "/"))
    proc = run_cli("embed", cache, "--merge-results", out, check=False)
    one_line_error(proc, str(copy), "params.src '/'", "staged from")
    assert snapshot(cache.parent) == before

    copy.write_text(pristine)
    run_cli("embed", cache, "--merge-results", out)
    merged = load_cache(cache)
    assert all(p.startswith(str(src) + "/") for p in merged.paths["path"].tolist())
    assert merged.n_files == 3

    # a results folder answers one queue: another queue into it is refused
    _edit(queue, lambda d: d["items"].pop())
    proc = run_worker(queue, out, check=False)
    one_line_error(proc, str(out), "another queue")


# ---- tampered embed results --------------------------------------------------------------
def _tamper_segments(out: Path, change) -> None:
    """Rewrite every results segment through ``change(arrays, meta)``."""
    for seg in list_segments(out / "results.npz"):
        with np.load(seg, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays["meta"]))
        change(arrays, meta)
        arrays["meta"] = np.array(json.dumps(meta))
        with open(seg, "wb") as fh:
            np.savez(fh, **arrays)


def _with_faces(change):
    def apply(arrays, meta):
        if arrays.get("faces.embedding") is not None and len(arrays["faces.embedding"]):
            change(arrays, meta)
    return apply


def _set(key, fn):
    return _with_faces(lambda a, m: a.__setitem__(key, fn(a[key])))


TAMPERED = {
    "64-D embeddings": (_set("faces.embedding", lambda e: e[:, :64].copy()),
                        ["faces.embedding", "shape"]),
    "64-D embeddings and meta": (
        _with_faces(lambda a, m: (a.__setitem__("faces.embedding", a["faces.embedding"][:, :64]),
                                  m.__setitem__("embedding_dim", 64))),
        ["meta.embedding_dim", "64 differs from the cache's 128"]),
    "NaN embedding": (_set("faces.embedding", lambda e: np.full_like(e, np.nan)),
                      ["faces.embedding", "non-finite"]),
    "bbox of shape (N,2)": (_set("faces.bbox", lambda b: b[:, :2].copy()),
                            ["faces.bbox", "shape"]),
    "embeddings as strings": (_set("faces.embedding", lambda e: e.astype(str)),
                              ["faces.embedding", "expected float32"]),
    "missing column": (_with_faces(lambda a, m: a.pop("faces.det_score")),
                       ["faces.det_score", "missing"]),
    "foreign sha256": (_with_faces(lambda a, m: a.__setitem__(
        "files.sha256", np.array(["f" * 64] * len(a["files.sha256"])))),
        ["files.sha256[0]", "not an item of the queue"]),
    "bad sha256": (_with_faces(lambda a, m: a.__setitem__(
        "paths.sha256", np.array(["../x"] * len(a["paths.sha256"])))),
        ["paths.sha256[0]", "not an item of the queue"]),
    "path outside": (_with_faces(lambda a, m: a.__setitem__(
        "paths.path", np.array(["/etc/passwd"] * len(a["paths.path"])))),
        ["paths.path[0]", "'/etc/passwd'"]),
    "meta of the wrong type": (_with_faces(lambda a, m: m.__setitem__("det_size", [640])),
                               ["meta.det_size"]),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_tampered_results_leave_the_cache_unchanged(staged, tmp_path, case):
    _src, cache, queue = staged
    out = tmp_path / "out"
    run_worker(queue, out)
    change, needles = TAMPERED[case]
    _tamper_segments(out, change)
    before = snapshot(cache.parent)
    proc = run_cli("embed", cache, "--merge-results", out, check=False)
    one_line_error(proc, "results.npz", *needles)
    assert snapshot(cache.parent) == before, "a refused merge writes nothing"
    run_cli("cluster", cache, tmp_path / "sorted", "--threshold", TEST_THRESHOLD)  # still works


# ---- multiface queue and results ---------------------------------------------------------
@pytest.fixture
def multiface_queue(export_dir, tmp_path):
    queue = tmp_path / "mq.json"
    run_cli("audit-multiface", "stage", export_dir, queue, *PACK)
    return queue


@pytest.mark.parametrize("change, needles", [
    (lambda d: d["items"][0].__setitem__("path", "/etc/passwd"),
     ["items[0].path", "not under a staged root"]),
    (lambda d: d["items"][0].__setitem__("file", "../../../../etc/passwd"),
     ["items[0].file", "faces/<name>.png"]),
    (lambda d: d["items"][0].__setitem__("faceset", ".."), ["items[0].faceset"]),
    (lambda d: d["params"].__setitem__("det_size", [640]), ["params.det_size"]),
    (lambda d: d["params"].pop("export"), ["params.export"]),
])
def test_multiface_queue_items_stay_inside_the_export(multiface_queue, tmp_path, change,
                                                      needles):
    import subprocess
    import sys

    _edit(multiface_queue, change)
    results = tmp_path / "r.jsonl"
    proc = subprocess.run([sys.executable, str(MULTIFACE_WORKER), str(multiface_queue),
                           str(results), "--no-progress"], capture_output=True, text=True)
    one_line_error(proc, str(multiface_queue), *needles)
    assert not results.exists()
    results.write_text("")
    proc = run_cli("audit-multiface", "apply", multiface_queue, results, check=False)
    one_line_error(proc, str(multiface_queue), *needles)


def _rewrite_results(path: Path, change) -> None:
    recs = [json.loads(ln) for ln in path.read_text().splitlines()]
    change(recs)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


@pytest.mark.parametrize("change, needles", [
    (lambda r: r[0].__setitem__("faces", "2"), ["record 1 faces"]),
    (lambda r: r[0].__setitem__("faces", True), ["record 1 faces"]),
    (lambda r: r[1].__setitem__("id", "faceset_000/../../etc/passwd.png"), ["record 2 id"]),
    (lambda r: r[0].__setitem__("path", "/etc/passwd"), ["record 1 path"]),
    (lambda r: r[0].__setitem__("scores", ["x"]), ["record 1 scores"]),
    (lambda r: r[0].__setitem__("error", 5), ["record 1 error"]),
])
def test_tampered_multiface_results_change_nothing(export_dir, multiface_queue, tmp_path,
                                                   change, needles):
    from test_audit import tree

    results = tmp_path / "r.jsonl"
    run_multiface_worker(multiface_queue, results)
    _rewrite_results(results, change)
    before = tree(export_dir)
    proc = run_cli("audit-multiface", "apply", multiface_queue, results, check=False)
    one_line_error(proc, str(results), *needles)
    assert tree(export_dir) == before


def test_garbage_inside_multiface_results_is_refused_but_a_cut_last_line_is_not(
        multiface_queue, tmp_path):
    results = tmp_path / "r.jsonl"
    run_multiface_worker(multiface_queue, results)
    lines = results.read_bytes().splitlines(keepends=True)
    results.write_bytes(b"".join(lines) + lines[0][:10])      # a kill mid-write: fine
    run_cli("audit-multiface", "apply", multiface_queue, results, "--dry-run")
    results.write_bytes(lines[0] + b"garbage\n" + b"".join(lines[1:]))
    proc = run_cli("audit-multiface", "apply", multiface_queue, results, "--dry-run",
                   check=False)
    one_line_error(proc, str(results), "line 2")
