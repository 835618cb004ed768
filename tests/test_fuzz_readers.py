"""Every reader of an untrusted file, fed mutated files: missing keys, wrong types, wrong
shapes, path traversal, huge sizes, NaN. Each case runs the real command (or worker script)
that reads the file and expects: a non-zero exit, exactly one line starting with ``error:``
on stderr that names the file, no traceback, and nothing written outside the command's
output (the test's tmp folder and the shared inputs are snapshotted before and after).

Table-driven: a case is one line of CASES (file kind, mutation, command). The inputs (a small
real embed / cluster / refine / export-swap / audit / embed-queue of a few test photos, and
for the newer readers: the capture dates beside the cache, an eras run, a done and a pending
(killed) run record, the video state of one clip, occlusion scores, an Immich stage state)
are built once per module; each case works on its own copy. Mutations beyond wrong types:
text that is not UTF-8, JSON nested 100000 deep, numbers of 400 digits, NaN / Infinity,
entries removed from a run record (which must then fail its digest).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import FACES, LOW_GATES, PACK, ROOT, TEST_THRESHOLD, VIDEO, run_cli
from facesets.formats.cache import load_cache
from facesets.formats.immich_state import StateWriter, header, record
from onnx_models import occlusion_classifier

SORT = ROOT / "sort_faces.py"
EMBED_WORKER = ROOT / "work" / "embed_worker.py"
MULTIFACE_WORKER = ROOT / "work" / "multiface_worker.py"
VIDEO_WORKER = ROOT / "work" / "video_face_worker.py"
PEOPLE = [p for p in sorted(FACES.iterdir()) if len(list(p.glob("*.jpg"))) >= 10][:3]
REFINE_ARGS = ["--initial-threshold", TEST_THRESHOLD, "--merge-threshold", "0.5",
               "--outlier-threshold", TEST_THRESHOLD, *LOW_GATES, "--min-faces", "4"]
EXPORT_ARGS = ["--swap-outlier-threshold", TEST_THRESHOLD, "--min-face-short", "20", *PACK,
               "--no-progress"]
# eras on the test photos (no EXIF dates: one undated era); testpack_s has no eras thresholds
ERAS_ARGS = ["--recover-threshold", "1.0", "--tighten-threshold", "0.9", "--split-threshold",
             "0.65", "--attach-threshold", "0.5", "--min-anchor", "2", "--min-era-faces", "2",
             "--min-short", "20", "--min-blur", "0", "--min-det-score", "0.5", *PACK,
             "--no-progress"]
VIDEO_STAGE = [*PACK, "--fps", "1", "--det-size", "320"]
VIDEO_GATES = ["--threshold", TEST_THRESHOLD, "--min-face-short", "40"]
# each case's copy of the inputs lies this deep in its sandbox, so that a traversal
# ("../../evil") from an output folder still lands in the sandbox, where it is seen
NEST = ("a", "b", "work")


def _copy_photos(dest: Path, people, first: int, last: int) -> None:
    for person in people:
        (dest / person.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(person.glob("*.jpg"))[first:last]:
            shutil.copy2(f, dest / person.name / f.name)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """The inputs every case copies (read-only):
    photos/ (2 people x 5) -> c.npz -> raw/ (cluster), refined/ (refine), swap/ (export-swap),
    mq.json + mres.jsonl (audit queue, worker results); photos2/ (more of one person, a new
    person): cx.npz = c.npz + photos2 (for extend), eq.json (embed queue of photos2 against
    c.npz) + eres/ (its worker results)."""
    w = tmp_path_factory.mktemp("fuzz_inputs")
    _copy_photos(w / "photos", PEOPLE[:2], 0, 5)
    _copy_photos(w / "photos2", PEOPLE[:1], 5, 7)
    _copy_photos(w / "photos2", PEOPLE[2:3], 0, 5)
    run_cli("embed", w / "photos", w / "c.npz", *PACK, "--no-progress")
    run_cli("cluster", w / "c.npz", w / "raw", "--threshold", TEST_THRESHOLD)
    run_cli("refine", w / "c.npz", w / "refined", *REFINE_ARGS)
    run_cli("export-swap", w / "c.npz", w / "refined" / "refine_manifest.json", w / "swap",
            *EXPORT_ARGS)
    run_cli("audit-multiface", "stage", w / "swap", w / "mq.json", *PACK)
    subprocess.run([sys.executable, str(MULTIFACE_WORKER), str(w / "mq.json"),
                    str(w / "mres.jsonl"), "--no-progress"], check=True, capture_output=True)
    shutil.copy2(w / "c.npz", w / "cx.npz")
    run_cli("embed", w / "photos2", w / "cx.npz", *PACK, "--no-progress")
    shutil.copy2(w / "c.npz", w / "ce.npz")
    run_cli("embed", w / "photos2", w / "ce.npz", *PACK, "--stage-queue", w / "eq.json")
    subprocess.run([sys.executable, str(EMBED_WORKER), str(w / "eq.json"), str(w / "eres"),
                    "--no-progress"], check=True, capture_output=True)
    assert len(json.loads((w / "refined" / "refine_manifest.json").read_text())["facesets"]) == 2
    _build_newer(w)
    return w


def _build_newer(w: Path) -> None:
    """The inputs of the newer readers, each written by the command that writes it:
    c.npz.dates.json (an eras dry run); swap_eras/ (an eras run: its eras[] record);
    swap_done/ (a finished drop-faces run) and swap_pend/ (the same run killed right after
    its run folder appeared: pending); vstate/ (video scenes, stage, worker, track of one
    clip); oq.json, ores.jsonl, oscores.json (occlusion stage, score, merge with a stand-in
    classifier); imm/.immich/state.jsonl (an Immich stage state, by its writer)."""
    run_cli("eras", w / "c.npz", "faceset_000", "--into", w / "swap", *ERAS_ARGS, "--dry-run")
    assert (w / "c.npz.dates.json").is_file()
    shutil.copytree(w / "swap", w / "swap_eras", symlinks=True)
    run_cli("eras", w / "c.npz", "faceset_000", "--into", w / "swap_eras", *ERAS_ARGS)
    assert json.loads((w / "swap_eras" / "manifest.json").read_text())["eras"]

    best = sorted(json.loads((w / "swap" / "faceset_000" / "manifest.json").read_text())
                  ["faces"], key=lambda f: f["rank"])[0]["file"]
    drop = ["drop-faces", None, "faceset_000", best]
    for name in ("swap_done", "swap_count", "swap_pend"):
        shutil.copytree(w / "swap", w / name, symlinks=True)
    run_cli(*[w / "swap_done" if a is None else a for a in drop])
    log = w / "commits.log"
    env = dict(os.environ, FACESETS_COMMIT_LOG=str(log))
    subprocess.run([sys.executable, SORT, *[str(w / "swap_count") if a is None else a
                                            for a in drop]], env=env, check=True,
                   capture_output=True)
    commits = [ln.split("\t", 1)[1] for ln in log.read_text().splitlines()]
    at_folder = next(i for i, c in enumerate(commits, 1)
                     if Path(c).parent.name == ".runs" and not c.endswith(".partial"))
    log.unlink()
    shutil.rmtree(w / "swap_count")
    env = dict(os.environ, FACESETS_KILL_AT_COMMIT=str(at_folder))
    killed = subprocess.run([sys.executable, SORT, *[str(w / "swap_pend") if a is None else a
                                                     for a in drop]], env=env,
                            capture_output=True)
    assert killed.returncode == -9, killed.stderr
    assert len(list((w / "swap_pend" / ".runs").glob("*/run.json"))) == 1

    (w / "videos").mkdir()
    os.symlink(VIDEO / "video_chunk_6s.mp4", w / "videos" / "clip.mp4")
    run_cli("video", "scenes", w / "videos", w / "vstate", "--no-progress")
    run_cli("video", "stage", w / "vstate", *VIDEO_STAGE)
    subprocess.run([sys.executable, str(VIDEO_WORKER), str(w / "vstate" / "queue.json"),
                    str(w / "vstate" / "faces"), "--no-progress"], check=True,
                   capture_output=True)
    run_cli("video", "track", w / "vstate", *VIDEO_GATES)
    assert json.loads((w / "vstate" / "tracks.json").read_text())["segments"]

    cls = occlusion_classifier(w / "cls.onnx")
    run_cli("occlusion", "stage", w / "swap", w / "oq.json")
    run_cli("occlusion", "score", w / "oq.json", w / "ores.jsonl", "--scorer", f"onnx:{cls}",
            "--no-progress")
    run_cli("occlusion", "merge", w / "ores.jsonl", w / "oscores.json")

    writer = StateWriter(w / "imm", header("http://127.0.0.1:9", "fuzz", str(w / "c.npz")))
    photo = sorted((w / "photos").rglob("*.jpg"))[0]
    staged = w / "imm" / "2023" / "a.jpg"
    staged.parent.mkdir(parents=True)
    shutil.copy2(photo, staged)
    import hashlib
    sha = hashlib.sha256(staged.read_bytes()).hexdigest()
    writer.write(record("asset1", "staged", path="2023/a.jpg", sha256=sha,
                        size=staged.stat().st_size, faces=1, max_face=120.0))
    writer.write(record("asset2", "noface"))


# ---- mutations: each gets the file (in the case's copy) and the sandbox ------------------
Mutation = Callable[[Path, Path], None]


def _get(doc, path: str):
    for part in path.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def json_set(path: str, value) -> Mutation:
    """Set ``a.0.b`` (dots; numbers index lists) to ``value`` (a callable gets the case's
    sandbox and returns the value)."""
    def mutate(f: Path, sandbox: Path) -> None:
        doc = json.loads(f.read_text(encoding="utf-8"))
        parent, _, last = path.rpartition(".")
        target = _get(doc, parent) if parent else doc
        v = value(sandbox) if callable(value) else value
        target[int(last) if isinstance(target, list) else last] = v
        f.write_text(json.dumps(doc), encoding="utf-8")
    return mutate


def json_del(path: str) -> Mutation:
    def mutate(f: Path, sandbox: Path) -> None:
        doc = json.loads(f.read_text(encoding="utf-8"))
        parent, _, last = path.rpartition(".")
        target = _get(doc, parent) if parent else doc
        del target[int(last) if isinstance(target, list) else last]
        f.write_text(json.dumps(doc), encoding="utf-8")
    return mutate


def jsonl_set(line: int, key: str, value) -> Mutation:
    def mutate(f: Path, sandbox: Path) -> None:
        recs = [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines() if x]
        recs[line][key] = value
        f.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return mutate


DEEP = "__deep__"   # json_set / jsonl_set this, then ``deepen`` makes it 100000 lists deep
HUGE = "__huge__"   # ... or a whole number of 400 digits


def _raw(text: str) -> str:
    return (text.replace(f'"{DEEP}"', "[" * 100_000 + "]" * 100_000)
            .replace(f'"{HUGE}"', "1" + "0" * 400))


def raw_json_set(path: str, value) -> Mutation:
    """json_set, then DEEP / HUGE placeholders replaced by text json.dumps cannot write."""
    def mutate(f: Path, sandbox: Path) -> None:
        json_set(path, value)(f, sandbox)
        f.write_text(_raw(f.read_text(encoding="utf-8")), encoding="utf-8")
    return mutate


def raw_jsonl_set(line: int, key: str, value) -> Mutation:
    def mutate(f: Path, sandbox: Path) -> None:
        jsonl_set(line, key, value)(f, sandbox)
        f.write_text(_raw(f.read_text(encoding="utf-8")), encoding="utf-8")
    return mutate


def not_utf8(f: Path, sandbox: Path) -> None:
    """A byte that is no UTF-8 inside the first string (a file from another encoding)."""
    data = f.read_bytes()
    at = data.index(b'"') + 1
    f.write_bytes(data[:at] + b"\xff\xfe" + data[at:])


def jsonl_edit(line: int, change: Callable[[dict], None]) -> Mutation:
    def mutate(f: Path, sandbox: Path) -> None:
        recs = [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines() if x]
        change(recs[line])
        f.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return mutate


def json_edit(change: Callable[[dict], None]) -> Mutation:
    def mutate(f: Path, sandbox: Path) -> None:
        doc = json.loads(f.read_text(encoding="utf-8"))
        change(doc)
        f.write_text(json.dumps(doc), encoding="utf-8")
    return mutate


def first_face(change: Callable[[dict], None]) -> Callable[[dict], None]:
    """A video worker record's first detected face, changed."""
    def edit(rec: dict) -> None:
        face = next(fa for fr in rec["frames"] for fa in fr["faces"])
        change(face)
    return edit


def _first_with_faces(w: Path) -> int:
    recs = [json.loads(x) for x in (w / "vstate" / "faces" / "frames.jsonl")
            .read_text().splitlines() if x]
    return next(i for i, r in enumerate(recs) if any(fr["faces"] for fr in r["frames"]))


def frames_face(change: Callable[[dict], None]) -> Mutation:
    def mutate(f: Path, sandbox: Path) -> None:
        jsonl_edit(_first_with_faces(f.parent.parent.parent), first_face(change))(f, sandbox)
    return mutate


def dates_entry(value) -> Mutation:
    def change(doc: dict) -> None:
        doc["dates"][next(iter(doc["dates"]))] = value
    return json_edit(change)


def truncate(fraction: float = 0.5) -> Mutation:
    def mutate(f: Path, sandbox: Path) -> None:
        data = f.read_bytes()
        f.write_bytes(data[: int(len(data) * fraction)])
    return mutate


def npz_edit(change: Callable[[dict], None]) -> Mutation:
    """Load every array of an npz, let ``change`` edit the dict, write it back."""
    def mutate(f: Path, sandbox: Path) -> None:
        with np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        change(arrays)
        with open(f, "wb") as fh:
            np.savez(fh, **arrays)
    return mutate


def _set(key: str, fn) -> Callable[[dict], None]:
    def change(a: dict) -> None:
        a[key] = fn(a[key])
    return change


def _drop(key: str) -> Callable[[dict], None]:
    return lambda a: a.pop(key)


def _meta(value: str) -> Callable[[dict], None]:
    def change(a: dict) -> None:
        a["meta"] = np.array(value)
    return change


def _nan(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[0] = np.nan
    return x


def npz_bomb(member: str = "faces.det_score", gib: float = 2.0) -> Mutation:
    """Replace one member by a deflated .npy of ``gib`` GiB of zeros (a few MB on disk)."""
    def mutate(f: Path, sandbox: Path) -> None:
        n = int(gib * (1 << 30)) // 8
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f8", "fortran_order": False, "shape": (n,)})
        with zipfile.ZipFile(f) as z:
            keep = {i.filename: z.read(i) for i in z.infolist()
                    if i.filename != member + ".npy"}
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            for name, data in keep.items():
                z.writestr(name, data)
            info = zipfile.ZipInfo(member + ".npy")
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w", force_zip64=True) as out:
                out.write(header.getvalue())
                _write_zeros(out, n * 8)
    return mutate


def _write_zeros(out, size: int) -> None:
    """``size`` zero bytes, in blocks (the zip member deflates them as they come)."""
    block = bytes(64 << 20)
    while size > 0:
        out.write(block[: min(size, len(block))])
        size -= len(block)


def fsz_members(members: list[tuple[str, bytes]]) -> Mutation:
    """Replace a bundle by one holding ``members`` (name, data)."""
    def mutate(f: Path, sandbox: Path) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            for name, data in members:
                z.writestr(name, data)
    return mutate


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (one tiny IDAT, IEND): a header-only bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def fsz_bomb(inflated: int = 200 << 20) -> Mutation:
    """A bundle whose 0.png inflates to ``inflated`` bytes (its header says so honestly)."""
    def mutate(f: Path, sandbox: Path) -> None:
        with zipfile.ZipFile(f, "w") as z:
            info = zipfile.ZipInfo("0.png")
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w", force_zip64=True) as out:
                out.write(b"\x89PNG\r\n\x1a\n")
                _write_zeros(out, inflated)
    return mutate


def also(*mutations) -> Mutation:
    def mutate(f: Path, sandbox: Path) -> None:
        for m in mutations:
            m(f, sandbox)
    return mutate


def _first_segment(cache: str) -> Callable[[Path], Path]:
    return lambda w: sorted((w / f"{cache}.segments").glob("seg-*.npz"))[0]


def _segment_beside(cache: str) -> Callable[[Path], Path]:
    """A new segment of the cache (a copy of its base as seg-00000001.npz) to mutate."""
    def make(w: Path) -> Path:
        # numbered past what the base has folded in (segments at or below it are skipped)
        n = load_cache(w / cache).compacted_through + 1
        seg = w / f"{cache}.segments" / f"seg-{n:08d}.npz"
        seg.parent.mkdir(exist_ok=True)
        shutil.copy2(w / cache, seg)
        return seg
    return make


# ---- the commands that read each file ---------------------------------------------------
@dataclass
class Cmd:
    argv: Callable[[Path], list]       # full argv; W (the case's copy) given
    outputs: tuple[str, ...]           # paths in W (prefixes) the command may write
    env: dict[str, str] = field(default_factory=dict)


def cli(*args, outputs: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Cmd:
    return Cmd(lambda w: [sys.executable, SORT, *[a(w) if callable(a) else a for a in args]],
               outputs, env or {})


def worker(script: Path, *args, outputs: tuple[str, ...] = ()) -> Cmd:
    return Cmd(lambda w: [sys.executable, script, *[a(w) if callable(a) else a for a in args],
                          "--no-progress"], outputs)


def at(rel: str) -> Callable[[Path], Path]:
    return lambda w: w / rel


CLUSTER = cli("cluster", at("c.npz"), at("out"), "--threshold", TEST_THRESHOLD,
              outputs=("out",))
EXTEND_RAW = cli("extend", at("cx.npz"), at("raw"), outputs=("raw",))
EXTEND_REFINE = cli("extend", at("cx.npz"), at("raw"), "--refine-out", at("refined"),
                    outputs=("raw", "refined"))
EXPORT = cli("export-swap", at("c.npz"), at("refined/refine_manifest.json"), at("out"),
             *EXPORT_ARGS, outputs=("out",))
EXPORT_CANDIDATES = cli("export-swap", at("c.npz"), at("refined/refine_manifest.json"),
                        at("out"), "--candidates", "--raw-manifest", at("raw/manifest.json"),
                        "--candidate-match-threshold", TEST_THRESHOLD, *EXPORT_ARGS,
                        outputs=("out",))
STAGE = cli("audit-multiface", "stage", at("swap"), at("q.json"), *PACK, outputs=("q.json",))
APPLY = cli("audit-multiface", "apply", at("mq.json"), at("mres.jsonl"), outputs=("swap",))
VERIFY = cli("verify-fsz", at("swap/faceset_000/faceset_000_all.fsz"), *PACK, "--no-progress")
VERIFY_TOP = cli("verify-fsz", at("swap/faceset_000/faceset_000_top30.fsz"), *PACK,
                 "--no-progress")
MERGE = cli("embed", at("cx.npz"), "--merge-results", at("eres"),
            outputs=("cx.npz",))
EMBED_WORKER_RUN = worker(EMBED_WORKER, at("eq.json"), at("wout"), outputs=("wout",))
MULTIFACE_WORKER_RUN = worker(MULTIFACE_WORKER, at("mq.json"), at("wres.jsonl"),
                              outputs=("wres.jsonl", "wres.failures.jsonl"))
ERAS_DRY = cli("eras", at("c.npz"), "faceset_000", "--into", at("swap"), *ERAS_ARGS,
               "--dry-run")
ERAS_EXTEND = cli("eras", "extend", at("c.npz"), "faceset_000", "--into", at("swap_eras"),
                  *PACK, "--no-progress", outputs=(".swap_eras.facesets.lock",))
# a command on a folder with a pending run finishes it first; undo reads the done one
FINISH_PENDING = cli("rename", at("swap_pend"), "faceset_001", "Somebody",
                     outputs=(".swap_pend.facesets.lock",))
UNDO_DONE = cli("undo", at("swap_done"), outputs=(".swap_done.facesets.lock",))
IMMICH_STAGE = cli("immich", "stage", "--user", "fuzz", "--root", at("imm"),
                   env={"IMMICH_URL": "http://127.0.0.1:9", "IMMICH_API_KEY": "fuzz-key"})
VIDEO_STAGE_RUN = cli("video", "stage", at("vstate"), *VIDEO_STAGE,
                      outputs=("vstate/queue.json",))
VIDEO_TRACK = cli("video", "track", at("vstate"), *VIDEO_GATES, outputs=("vstate/tracks.json",))
VIDEO_CUT = cli("video", "cut", at("vstate"), at("vout"), "--no-progress", outputs=("vout",))
VIDEO_WORKER_RUN = worker(VIDEO_WORKER, at("vstate/queue.json"), at("vstate/faces"),
                          outputs=("vstate/faces/frames.jsonl", "vstate/faces/failures.jsonl"))
OCC_APPLY = cli("occlusion", "apply", at("oscores.json"), "--dry-run",
                outputs=("oscores.json.plan.json",))
OCC_MERGE = cli("occlusion", "merge", at("ores.jsonl"), at("s2.json"), outputs=("s2.json",))
# library grow reads the whole library before it changes anything: its settings, its listing
# and parked sections, every faceset manifest (the cache adds nothing new: a mutation it did
# not read would end in "nothing new", exit 0, and fail the case)
GROW = cli("library", "grow", at("swap"), at("c.npz"), *PACK, "--threshold", TEST_THRESHOLD,
           "--centroid-near", TEST_THRESHOLD, "--initial-threshold", TEST_THRESHOLD,
           "--merge-threshold", "0.5", "--outlier-threshold", TEST_THRESHOLD, "--no-progress",
           outputs=(".swap.facesets.lock",))


def _pending_record(w: Path) -> Path:
    return next((w / "swap_pend" / ".runs").glob("*/run.json"))


def _done_record(w: Path) -> Path:
    return next((w / "swap_done" / ".runs").glob("*/run.json"))


def _one_shot_to_do(w: Path) -> None:
    """frames.jsonl without its last record: the worker has a shot to do, so it loads its
    model and reads model.json."""
    f = w / "vstate" / "faces" / "frames.jsonl"
    lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
    f.write_text("".join(lines[:-1]), encoding="utf-8")


def _no_manifest_install(f: Path, sandbox: Path) -> None:
    """installs[] without manifest.json (after/manifest.json still there)."""
    json_edit(lambda d: d["installs"].remove("manifest.json"))(f, sandbox)


def _drop_result(w: Path) -> Path:
    """mres.jsonl with the first PNG reported as showing 2 faces, so apply acts."""
    f = w / "mres.jsonl"
    jsonl_set(0, "faces", 2)(f, w)
    jsonl_set(0, "scores", [0.9, 0.8])(f, w)
    return f


@dataclass
class Case:
    kind: str                                   # which reader
    mutation: str                               # what is wrong with the file
    target: str | Callable[[Path], Path]        # the file (relative to W, or made from W)
    mutate: Mutation
    cmd: Cmd
    # "fail": verify-fsz's FAIL report is fine too; "note": verify-fsz checks the bundle and
    # says on its line why the manifest beside it cannot be compared (file and field named)
    accept: tuple[str, ...] = ("error",)
    prepare: Callable[[Path], object] | None = field(default=None)

    @property
    def id(self) -> str:
        return f"{self.kind}: {self.mutation}"


RESULTS = "eres/results.npz"   # the embed worker's results cache
CASES = [
    # cache base, read by every command (here cluster)
    Case("cache base", "truncated", "c.npz", truncate(0.5), CLUSTER),
    Case("cache base", "missing column faces.embedding", "c.npz",
         npz_edit(_drop("faces.embedding")), CLUSTER),
    Case("cache base", "embeddings stored as strings", "c.npz",
         npz_edit(_set("faces.embedding", lambda x: x.astype(str))), CLUSTER),
    Case("cache base", "bbox of shape (N, 2)", "c.npz",
         npz_edit(_set("faces.bbox", lambda x: x[:, :2].copy())), CLUSTER),
    Case("cache base", "64-D rows in a 128-D cache", "c.npz",
         npz_edit(_set("faces.embedding", lambda x: x[:, :64].copy())), CLUSTER),
    Case("cache base", "row counts differ between columns", "c.npz",
         npz_edit(_set("faces.index", lambda x: x[:-1].copy())), CLUSTER),
    Case("cache base", "meta is a JSON list", "c.npz", npz_edit(_meta("[1, 2]")), CLUSTER),
    Case("cache base", "meta is not JSON", "c.npz", npz_edit(_meta("{not json")), CLUSTER),
    Case("cache base", "embedding_dim is a string", "c.npz",
         npz_edit(_meta('{"schema_version": 1, "embedding_dim": "lots"}')), CLUSTER),
    Case("cache base", "NaN embedding", "c.npz",
         npz_edit(_set("faces.embedding", _nan)), CLUSTER),
    Case("cache base", "a member inflating to 2 GiB", "c.npz", npz_bomb(), CLUSTER),
    # cache segment beside a good base
    Case("cache segment", "truncated", _segment_beside("c.npz"), truncate(0.5), CLUSTER),
    Case("cache segment", "64-D rows in a 128-D cache", _segment_beside("c.npz"),
         npz_edit(_set("faces.embedding", lambda x: x[:, :64].copy())), CLUSTER),
    Case("cache segment", "NaN embedding", _segment_beside("c.npz"),
         npz_edit(_set("faces.embedding", _nan)), CLUSTER),
    Case("cache segment", "missing column faces.kps", _segment_beside("c.npz"),
         npz_edit(_drop("faces.kps")), CLUSTER),
    Case("cache segment", "meta is a JSON string", _segment_beside("c.npz"),
         npz_edit(_meta('"x"')), CLUSTER),
    # cluster manifest (raw/manifest.json), read by extend and export-swap --candidates
    Case("cluster manifest", "persons missing", "raw/manifest.json", json_del("persons"),
         EXTEND_RAW),
    Case("cluster manifest", "persons is a string", "raw/manifest.json",
         json_set("persons", "x"), EXTEND_RAW),
    Case("cluster manifest", "person name ../../evil", "raw/manifest.json",
         json_set("persons.0.name", "../../evil"), EXTEND_RAW),
    Case("cluster manifest", "person name absolute", "raw/manifest.json",
         json_set("persons.0.name", lambda s: str(s / "abs_evil")), EXTEND_RAW),
    Case("cluster manifest", "face key is a number", "raw/manifest.json",
         json_set("persons.0.faces.0.key", 7), EXTEND_RAW),
    Case("cluster manifest", "threshold parameter is a string", "raw/manifest.json",
         json_set("parameters.threshold", "abc"), EXTEND_RAW),
    Case("cluster manifest", "singletons is a number", "raw/manifest.json",
         json_set("singletons", 3), EXPORT_CANDIDATES),
    # refine manifest, read by export-swap and extend --refine-out
    Case("refine manifest", "facesets missing", "refined/refine_manifest.json",
         json_del("facesets"), EXPORT),
    Case("refine manifest", "facesets is a dict", "refined/refine_manifest.json",
         json_set("facesets", {"a": 1}), EXPORT),
    Case("refine manifest", "face without key", "refined/refine_manifest.json",
         json_del("facesets.0.faces.0.key"), EXPORT),
    Case("refine manifest", "faces is a number", "refined/refine_manifest.json",
         json_set("facesets.0.faces", 5), EXPORT),
    Case("refine manifest", "faceset name ../../../evil", "refined/refine_manifest.json",
         json_set("facesets.0.name", "../../../evil"), EXTEND_REFINE),
    Case("refine manifest", "parameters is a list", "refined/refine_manifest.json",
         json_set("parameters", [1]), EXTEND_REFINE),
    Case("refine manifest", "min_short parameter is a string", "refined/refine_manifest.json",
         json_set("parameters.min_short", "big"), EXTEND_REFINE),
    # swap top manifest, read by audit-multiface stage
    Case("swap top manifest", "facesets missing", "swap/manifest.json", json_del("facesets"),
         STAGE),
    Case("swap top manifest", "facesets is a string", "swap/manifest.json",
         json_set("facesets", "faceset_000"), STAGE),
    Case("swap top manifest", "faceset name ../..", "swap/manifest.json",
         json_set("facesets.0.name", "../.."), STAGE),
    # swap faceset manifest, read by audit stage / apply and verify-fsz (centroid)
    Case("swap faceset manifest", "face file ../../../../etc/passwd",
         "swap/faceset_000/manifest.json",
         json_set("faces.0.file", "../../../../etc/passwd"), STAGE),
    Case("swap faceset manifest", "face file outside the faceset (apply)",
         "swap/faceset_000/manifest.json",
         json_set("faces.3.file", "../../../../etc/passwd"), APPLY, prepare=_drop_result),
    Case("swap faceset manifest", "faces is a dict", "swap/faceset_000/manifest.json",
         json_set("faces", {}), STAGE),
    Case("swap faceset manifest", "centroid is a string", "swap/faceset_000/manifest.json",
         json_set("centroid", "abc"), VERIFY, accept=("error", "note")),
    Case("swap faceset manifest", "centroid of 64 values", "swap/faceset_000/manifest.json",
         json_set("centroid", [0.1] * 64), VERIFY, accept=("error", "note")),
    # embed queue, read by the embed worker
    Case("embed queue", "items missing", "eq.json", json_del("items"), EMBED_WORKER_RUN),
    Case("embed queue", "item path relative", "eq.json",
         json_set("items.0.path", "photos2/x.jpg"), EMBED_WORKER_RUN),
    Case("embed queue", "item outside the staged folder", "eq.json",
         json_set("items.0.path", lambda s: str(s / "a" / "b" / "work" / "photos" /
                                                PEOPLE[0].name / sorted(
                                                    p.name for p in PEOPLE[0].glob("*.jpg"))[0])),
         EMBED_WORKER_RUN),
    Case("embed queue", "alias /etc/passwd", "eq.json",
         json_set("items.0.aliases", [{"path": "/etc/passwd", "size": 1, "mtime_ns": 1}]),
         EMBED_WORKER_RUN),
    Case("embed queue", "det_size is a list", "eq.json", json_set("params.det_size", [640]),
         EMBED_WORKER_RUN),
    Case("embed queue", "size is a string", "eq.json", json_set("items.0.size", "big"),
         EMBED_WORKER_RUN),
    # embed worker results, read by embed --merge-results
    Case("embed results", "64-D rows into a 128-D cache", _first_segment(RESULTS),
         npz_edit(_set("faces.embedding", lambda x: x[:, :64].copy())), MERGE),
    Case("embed results", "NaN embedding", _first_segment(RESULTS),
         npz_edit(_set("faces.embedding", _nan)), MERGE),
    Case("embed results", "missing column faces.bbox", _first_segment(RESULTS),
         npz_edit(_drop("faces.bbox")), MERGE),
    Case("embed results", "truncated segment", _first_segment(RESULTS), truncate(0.5),
         MERGE),
    Case("embed results", "a path outside the staged folder", _first_segment(RESULTS),
         npz_edit(_set("paths.path", lambda x: np.array(["/etc/passwd"] * len(x)))), MERGE),
    # audit queue and results, read by apply and the multiface worker
    Case("audit queue", "item faceset ../..", "mq.json",
         also(json_set("items.0.faceset", "../.."), lambda f, s: _drop_result(f.parent)),
         APPLY),
    Case("audit queue", "item file faces/../../x.png", "mq.json",
         also(json_set("items.0.file", "faces/../../x.png"),
              lambda f, s: _drop_result(f.parent)), APPLY),
    Case("audit queue", "export folder missing from params", "mq.json",
         json_del("params.export"), APPLY),
    Case("audit queue", "det_size is a list", "mq.json", json_set("params.det_size", [640]),
         MULTIFACE_WORKER_RUN),
    Case("audit results", "faces is a string", "mres.jsonl", jsonl_set(0, "faces", "2"),
         APPLY),
    Case("audit results", "faces is negative", "mres.jsonl", jsonl_set(0, "faces", -1),
         APPLY),
    # .fsz bundle, read by verify-fsz
    Case("bundle", "not a zip", "swap/faceset_000/faceset_000_all.fsz",
         lambda f, s: f.write_bytes(b"not a zip at all"), VERIFY, accept=("error", "fail")),
    Case("bundle", "truncated zip", "swap/faceset_000/faceset_000_all.fsz", truncate(0.5),
         VERIFY, accept=("error", "fail")),
    Case("bundle", "member ../evil.png", "swap/faceset_000/faceset_000_all.fsz",
         fsz_members([("../evil.png", png_header(8, 8))]), VERIFY, accept=("error", "fail")),
    Case("bundle", "member with an absolute path", "swap/faceset_000/faceset_000_all.fsz",
         fsz_members([("/tmp/evil.png", png_header(8, 8))]), VERIFY, accept=("error", "fail")),
    Case("bundle", "PNG header claiming 60000x60000", "swap/faceset_000/faceset_000_top30.fsz",
         fsz_members([("0.png", png_header(60000, 60000))]), VERIFY_TOP,
         accept=("error", "fail")),
    Case("bundle", "member inflating to 200 MiB", "swap/faceset_000/faceset_000_all.fsz",
         fsz_bomb(), VERIFY, accept=("error", "fail")),
    # the older JSON readers, fed text that is not UTF-8 or nested beyond Python's stack
    Case("refine manifest", "not UTF-8", "refined/refine_manifest.json", not_utf8, EXPORT),
    Case("refine manifest", "nested 100000 deep", "refined/refine_manifest.json",
         raw_json_set("parameters", DEEP), EXPORT),
    Case("embed queue", "not UTF-8", "eq.json", not_utf8, EMBED_WORKER_RUN),
    Case("embed queue", "nested 100000 deep", "eq.json", raw_json_set("params", DEEP),
         EMBED_WORKER_RUN),
    Case("swap top manifest", "not UTF-8", "swap/manifest.json", not_utf8, STAGE),
    # capture dates beside the cache, read by eras
    Case("dates", "truncated", "c.npz.dates.json", truncate(0.5), ERAS_DRY),
    Case("dates", "not UTF-8", "c.npz.dates.json", not_utf8, ERAS_DRY),
    Case("dates", "nested 100000 deep", "c.npz.dates.json", raw_json_set("tags", DEEP),
         ERAS_DRY),
    Case("dates", "dates is a list", "c.npz.dates.json", json_set("dates", []), ERAS_DRY),
    Case("dates", "a date that is no date", "c.npz.dates.json", dates_entry("yesterday"),
         ERAS_DRY),
    Case("dates", "a date in year 9999", "c.npz.dates.json",
         dates_entry("9999-01-01T00:00:00"), ERAS_DRY),
    Case("dates", "a date that is a number", "c.npz.dates.json", dates_entry(1997), ERAS_DRY),
    Case("dates", "version of 400 digits", "c.npz.dates.json",
         raw_json_set("version", HUGE), ERAS_DRY),
    Case("dates", "format missing", "c.npz.dates.json", json_del("format"), ERAS_DRY),
    # the Immich stage state, read by immich stage (before it asks the server anything)
    Case("immich state", "header not UTF-8", "imm/.immich/state.jsonl", not_utf8,
         IMMICH_STAGE),
    Case("immich state", "record path ../../evil.jpg", "imm/.immich/state.jsonl",
         jsonl_set(1, "path", "../../evil.jpg"), IMMICH_STAGE),
    Case("immich state", "record path absolute", "imm/.immich/state.jsonl",
         jsonl_set(1, "path", "/etc/passwd"), IMMICH_STAGE),
    Case("immich state", "sha256 is a number", "imm/.immich/state.jsonl",
         jsonl_set(1, "sha256", 5), IMMICH_STAGE),
    Case("immich state", "faces negative", "imm/.immich/state.jsonl",
         jsonl_set(1, "faces", -3), IMMICH_STAGE),
    Case("immich state", "max_face NaN", "imm/.immich/state.jsonl",
         jsonl_set(1, "max_face", float("nan")), IMMICH_STAGE),
    Case("immich state", "max_face Infinity", "imm/.immich/state.jsonl",
         jsonl_set(1, "max_face", float("inf")), IMMICH_STAGE),
    Case("immich state", "size of 400 digits", "imm/.immich/state.jsonl",
         raw_jsonl_set(1, "size", HUGE), IMMICH_STAGE),
    Case("immich state", "a middle line nested 100000 deep", "imm/.immich/state.jsonl",
         raw_jsonl_set(1, "reason", DEEP), IMMICH_STAGE),
    Case("immich state", "server with a password", "imm/.immich/state.jsonl",
         jsonl_set(0, "server", "http://u:pw@127.0.0.1:9"), IMMICH_STAGE),
    Case("immich state", "cache missing", "imm/.immich/state.jsonl",
         jsonl_edit(0, lambda h: h.pop("cache")), IMMICH_STAGE),
    # video: scenes (read by stage), queue + worker records (track), tracks (cut)
    Case("video scenes", "truncated", "vstate/scenes/clip.json", truncate(0.5),
         VIDEO_STAGE_RUN),
    Case("video scenes", "not UTF-8", "vstate/scenes/clip.json", not_utf8, VIDEO_STAGE_RUN),
    Case("video scenes", "nested 100000 deep", "vstate/scenes/clip.json",
         raw_json_set("shots", DEEP), VIDEO_STAGE_RUN),
    Case("video scenes", "shot start NaN", "vstate/scenes/clip.json",
         json_set("shots.0.start", float("nan")), VIDEO_STAGE_RUN),
    Case("video scenes", "shot end before its start", "vstate/scenes/clip.json",
         json_set("shots.0.end", -1.0), VIDEO_STAGE_RUN),
    Case("video scenes", "key ../evil", "vstate/scenes/clip.json", json_set("key", "../evil"),
         VIDEO_STAGE_RUN),
    Case("video scenes", "frames of 400 digits", "vstate/scenes/clip.json",
         raw_json_set("frames", HUGE), VIDEO_STAGE_RUN),
    Case("video queue", "item path outside its root", "vstate/queue.json",
         json_set("items.0.path", "/etc/passwd"), VIDEO_TRACK),
    Case("video queue", "fps of 400 digits", "vstate/queue.json",
         raw_json_set("params.fps", HUGE), VIDEO_TRACK),
    Case("video queue", "not UTF-8", "vstate/queue.json", not_utf8, VIDEO_TRACK),
    Case("video frames", "a face without yaw", "vstate/faces/frames.jsonl",
         frames_face(lambda fa: fa.pop("yaw")), VIDEO_TRACK),
    Case("video frames", "a face without bbox", "vstate/faces/frames.jsonl",
         frames_face(lambda fa: fa.pop("bbox")), VIDEO_TRACK),
    Case("video frames", "embedding NaN", "vstate/faces/frames.jsonl",
         frames_face(lambda fa: fa["embedding"].__setitem__(0, float("nan"))), VIDEO_TRACK),
    Case("video frames", "det_score 7", "vstate/faces/frames.jsonl",
         frames_face(lambda fa: fa.__setitem__("det_score", 7)), VIDEO_TRACK),
    Case("video frames", "embedding of 3 values", "vstate/faces/frames.jsonl",
         frames_face(lambda fa: fa.__setitem__("embedding", [0.1, 0.2, 0.3])), VIDEO_TRACK),
    Case("video model", "truncated", "vstate/faces/model.json", truncate(0.5),
         VIDEO_WORKER_RUN, prepare=_one_shot_to_do),
    Case("video model", "a list", "vstate/faces/model.json",
         lambda f, s: f.write_text("[1, 2]"), VIDEO_WORKER_RUN, prepare=_one_shot_to_do),
    Case("video model", "model_id is a number", "vstate/faces/model.json",
         json_set("model_id", 5), VIDEO_WORKER_RUN, prepare=_one_shot_to_do),
    Case("video tracks", "a segment without shot", "vstate/tracks.json",
         json_del("segments.0.shot"), VIDEO_CUT),
    Case("video tracks", "segment start NaN", "vstate/tracks.json",
         json_set("segments.0.start", float("nan")), VIDEO_CUT),
    Case("video tracks", "segment key ../evil", "vstate/tracks.json",
         json_set("segments.0.key", "../evil"), VIDEO_CUT),
    Case("video tracks", "a segment of no track", "vstate/tracks.json",
         json_set("segments.0.track", "nobody#0#0"), VIDEO_CUT),
    Case("video tracks", "not UTF-8", "vstate/tracks.json", not_utf8, VIDEO_CUT),
    Case("video tracks", "nested 100000 deep", "vstate/tracks.json",
         raw_json_set("params", DEEP), VIDEO_CUT),
    # occlusion: scores (read by apply), worker results and their queue copy (merge)
    Case("occlusion scores", "truncated", "oscores.json", truncate(0.5), OCC_APPLY),
    Case("occlusion scores", "not UTF-8", "oscores.json", not_utf8, OCC_APPLY),
    Case("occlusion scores", "nested 100000 deep", "oscores.json",
         raw_json_set("errors", DEEP), OCC_APPLY),
    Case("occlusion scores", "face file ../../evil.png", "oscores.json",
         json_set("facesets.faceset_000.0.file", "../../evil.png"), OCC_APPLY),
    Case("occlusion scores", "a score NaN", "oscores.json",
         json_edit(lambda d: d["facesets"]["faceset_000"][0]["scores"].update(
             {k: float("nan") for k in d["facesets"]["faceset_000"][0]["scores"]})),
         OCC_APPLY),
    Case("occlusion scores", "export relative", "oscores.json", json_set("export", "swap"),
         OCC_APPLY),
    Case("occlusion scores", "version of 400 digits", "oscores.json",
         raw_json_set("version", HUGE), OCC_APPLY),
    Case("occlusion results", "a score of 3", "ores.jsonl",
         jsonl_edit(0, lambda r: r["scores"].update({k: 3 for k in r["scores"]})), OCC_MERGE),
    Case("occlusion results", "path outside the export", "ores.jsonl",
         jsonl_set(0, "path", "/etc/passwd"), OCC_MERGE),
    Case("occlusion results", "queue copy: item path outside", "ores.jsonl.queue.json",
         json_set("items.0.path", "/etc/passwd"), OCC_MERGE),
    Case("occlusion results", "queue copy: not UTF-8", "ores.jsonl.queue.json", not_utf8,
         OCC_MERGE),
    # eras[] of the top manifest, read by eras extend (it runs with the recorded parameters)
    Case("eras record", "split -1", "swap_eras/manifest.json",
         json_set("eras.0.parameters.split", -1), ERAS_EXTEND),
    Case("eras record", "min_anchor of 41 digits", "swap_eras/manifest.json",
         json_set("eras.0.parameters.min_anchor", 10 ** 40), ERAS_EXTEND),
    Case("eras record", "min_anchor 1e40", "swap_eras/manifest.json",
         json_set("eras.0.parameters.min_anchor", 1e40), ERAS_EXTEND),
    Case("eras record", "year_window negative", "swap_eras/manifest.json",
         json_set("eras.0.parameters.year_window", -5), ERAS_EXTEND),
    Case("eras record", "era folder ../evil", "swap_eras/manifest.json",
         json_set("eras.0.eras.0.folder", "../evil"), ERAS_EXTEND),
    Case("eras record", "centroid NaN", "swap_eras/manifest.json",
         json_set("eras.0.centroid.0", float("nan")), ERAS_EXTEND),
    Case("eras record", "source ../..", "swap_eras/manifest.json",
         json_set("eras.0.source", "../.."), ERAS_EXTEND),
    # run records: a pending one (finished by the next command) and a done one (undo)
    Case("pending run", "moves[0] removed", _pending_record, json_del("moves.0"),
         FINISH_PENDING),
    Case("pending run", "installs[0] removed", _pending_record, json_del("installs.0"),
         FINISH_PENDING),
    Case("pending run", "installs without manifest.json", _pending_record,
         _no_manifest_install, FINISH_PENDING),
    Case("pending run", "rebuild[0] removed", _pending_record, json_del("rebuild.0"),
         FINISH_PENDING),
    Case("pending run", "moves[0].to ../../evil.png", _pending_record,
         json_set("moves.0.to", "../../evil.png"), FINISH_PENDING),
    Case("pending run", "truncated", _pending_record, truncate(0.5), FINISH_PENDING),
    Case("pending run", "not UTF-8", _pending_record, not_utf8, FINISH_PENDING),
    Case("pending run", "nested 100000 deep", _pending_record,
         raw_json_set("summary", DEEP), FINISH_PENDING),
    Case("pending run", "a summary count NaN", _pending_record,
         json_set("summary.dropped", float("nan")), FINISH_PENDING),
    Case("pending run", "version of 400 digits", _pending_record,
         raw_json_set("version", HUGE), FINISH_PENDING),
    Case("pending run", "its run.sha256 removed", _pending_record,
         lambda f, s: (f.parent / "run.sha256").unlink(), FINISH_PENDING),
    Case("done run", "moves[0] removed", _done_record, json_del("moves.0"), UNDO_DONE),
    Case("done run", "installs[0] removed", _done_record, json_del("installs.0"), UNDO_DONE),
    Case("done run", "rebuild[0] removed", _done_record, json_del("rebuild.0"), UNDO_DONE),
    Case("done run", "changed[0] removed", _done_record, json_del("changed.0"), UNDO_DONE),
    # the library a grow reads (the command as a user runs it, on a tampered library)
    Case("library settings", "a gate is a word", "swap/manifest.json",
         json_set("settings.gates.min_faces", "lots"), GROW),
    Case("library settings", "a threshold of 5", "swap/manifest.json",
         json_set("settings.thresholds.swap_outlier", 5), GROW),
    Case("library settings", "pack_dir NUL", "swap/manifest.json",
         json_set("settings.pack_dir", "/x\x00y"), GROW),
    Case("library listing", "faceset name ../../evil", "swap/manifest.json",
         json_set("facesets.0.name", "../../evil"), GROW),
    Case("library listing", "quarantined moved_to ../../evil", "swap/manifest.json",
         json_set("quarantined", [{"name": "faceset_000", "moved_to": "../../evil"}]), GROW),
    Case("library listing", "runs is a string", "swap/manifest.json",
         json_set("runs", "x"), GROW),
    Case("faceset manifest", "face key is a number", "swap/faceset_000/manifest.json",
         json_set("faces.0.key", 7), GROW),
    Case("faceset manifest", "dropped is a string", "swap/faceset_000/manifest.json",
         json_set("dropped", "x"), GROW),
    Case("faceset manifest", "faces missing", "swap/faceset_000/manifest.json",
         json_del("faces"), GROW),
]


# ---- running a case -------------------------------------------------------------------------
def _files(root: Path, allowed: Callable[[Path], bool]) -> dict[str, tuple]:
    """Every file and symlink under ``root`` (but the allowed paths) -> (size, mtime)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if not allowed(d / n)]
        for name in filenames + [n for n in dirnames if (d / n).is_symlink()]:
            p = d / name
            if not allowed(p):
                st = p.lstat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def _may_write(w: Path, cmd: Cmd) -> Callable[[Path], bool]:
    """What a command may write: its outputs and, beside each, the names that start with
    the output's name (its lock, segments) or with a dot and that name (temp and staging)."""
    outs = [w / rel for rel in cmd.outputs]

    def allowed(p: Path) -> bool:
        return any(p.parent == o.parent and (p.name.startswith(o.name)
                                             or p.name.startswith(f".{o.name}."))
                   for o in outs)
    return allowed


def _never(p: Path) -> bool:
    return False


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def _names_of(target: Path) -> set[str]:
    """What an error line may call the mutated file: its name, or for a cache segment the
    cache it belongs to (a row checked against a queue is named in the merged results)."""
    names = {target.name}
    if target.parent.name.endswith(".segments"):
        names.add(target.parent.name[:-len(".segments")])
    return names


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_mutated_file_gives_one_error_line_and_writes_nothing_outside(case, pristine,
                                                                        tmp_path):
    sandbox = tmp_path
    w = sandbox.joinpath(*NEST)
    shutil.copytree(pristine, w, symlinks=True)
    for f in list(w.rglob("*.json")) + list(w.rglob("*.jsonl")):   # paths point at the copy
        if f.parent.name == "eres":
            continue   # the worker's queue copy answers its results, which keep their paths
        f.write_text(f.read_text(encoding="utf-8").replace(str(pristine), str(w)),
                     encoding="utf-8")
    if case.prepare:
        case.prepare(w)
    target = w / case.target if isinstance(case.target, str) else case.target(w)
    case.mutate(target, sandbox)

    allowed = _may_write(w, case.cmd)
    before = _files(sandbox, allowed), _files(pristine, _never)
    proc = subprocess.run([str(a) for a in case.cmd.argv(w)], cwd=w, capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", **case.cmd.env))
    after = _files(sandbox, allowed), _files(pristine, _never)
    report = (f"\n--- exit {proc.returncode}\nstdout:\n{proc.stdout[-1500:]}\nstderr:\n"
              f"{proc.stderr[-2500:]}")
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    errors = _error_lines(proc.stderr)

    problems = []   # every way the case goes wrong, most severe first
    for was, now, where in ((before[0], after[0], "outside the output"),
                            (before[1], after[1], "in the shared inputs")):
        changed = sorted(p for p in set(was) | set(now) if was.get(p) != now.get(p))
        if changed:
            problems.append(f"written {where}: {[os.path.relpath(p, sandbox) for p in changed[:6]]}")
    if "Traceback" in proc.stderr:
        problems.append(f"traceback ({last[:200]})")
    noted = "note" in case.accept and proc.returncode == 0 and not errors
    if noted:
        if f"similarity n/a ({target}: " not in proc.stdout:
            problems.append("exit 0 without naming the manifest on the bundle's line")
    elif proc.returncode == 0:
        problems.append("exit 0: accepted silently")
    if noted:
        pass
    elif "fail" in case.accept and proc.returncode == 1 and not errors:
        if f"FAIL {target}" not in proc.stdout:
            problems.append("exit 1 without a FAIL line naming the bundle")
    elif len(errors) != 1:
        problems.append(f"{len(errors)} error: lines, exit {proc.returncode}")
    elif not any(name in errors[0] for name in _names_of(target)):
        problems.append(f"the error line does not name {target.name}: {errors[0][:300]}")
    assert not problems, "; ".join(problems) + report
