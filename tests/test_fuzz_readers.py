"""Every reader of an untrusted file, fed mutated files: missing keys, wrong types, wrong
shapes, path traversal, huge sizes, NaN. Each case runs the real command (or worker script)
that reads the file and expects: a non-zero exit, exactly one line starting with ``error:``
on stderr that names the file, no traceback, and nothing written outside the command's
output (the test's tmp folder and the shared inputs are snapshotted before and after).

Table-driven: a case is one line of CASES (file kind, mutation, command). The inputs (a small
real embed / cluster / refine / export-swap / audit / embed-queue of a few test photos) are
built once per module; each case works on its own copy.
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

from conftest import FACES, LOW_GATES, PACK, ROOT, TEST_THRESHOLD, run_cli
from facesets.formats.cache import load_cache

SORT = ROOT / "sort_faces.py"
EMBED_WORKER = ROOT / "work" / "embed_worker.py"
MULTIFACE_WORKER = ROOT / "work" / "multiface_worker.py"
PEOPLE = [p for p in sorted(FACES.iterdir()) if len(list(p.glob("*.jpg"))) >= 10][:3]
REFINE_ARGS = ["--initial-threshold", TEST_THRESHOLD, "--merge-threshold", "0.5",
               "--outlier-threshold", TEST_THRESHOLD, *LOW_GATES, "--min-faces", "4"]
EXPORT_ARGS = ["--swap-outlier-threshold", TEST_THRESHOLD, "--min-face-short", "20", *PACK,
               "--no-progress"]
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
    return w


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


def cli(*args, outputs: tuple[str, ...] = ()) -> Cmd:
    return Cmd(lambda w: [sys.executable, SORT, *[a(w) if callable(a) else a for a in args]],
               outputs)


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
                          text=True, timeout=300, env=dict(os.environ, PYTHONUNBUFFERED="1"))
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
