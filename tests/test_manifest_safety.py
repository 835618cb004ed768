"""Hand-edited (tampered) manifests: every reader gives one `error:` line naming the file and
the field, exits 2, and nothing is written outside the output folder."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import FACES, LOW_GATES, PACK, TEST_THRESHOLD, run_cli
from facesets.formats.bundle import read_fsz

REFINE_ARGS = ["--initial-threshold", TEST_THRESHOLD, "--merge-threshold", "0.5",
               "--outlier-threshold", TEST_THRESHOLD, *LOW_GATES, "--min-faces", "4"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    """cluster, refine and export-swap outputs of 4 people (6 photos each), and a cache
    holding 2 more photos of each (for extend). Read-only: copy before changing."""
    root = tmp_path_factory.mktemp("manifest_safety")
    people = sorted(p for p in FACES.iterdir() if len(list(p.glob("*.jpg"))) >= 8)[:4]
    for batch, part in (("batch1", slice(0, 6)), ("batch2", slice(6, 8))):
        for person in people:
            (root / batch / person.name).mkdir(parents=True)
            for f in sorted(person.glob("*.jpg"))[part]:
                shutil.copy2(f, root / batch / person.name / f.name)
    cache = root / "c.npz"
    run_cli("embed", root / "batch1", cache, *PACK, "--no-progress")
    run_cli("cluster", cache, root / "raw", "--threshold", TEST_THRESHOLD, "--link", "symlink")
    run_cli("refine", cache, root / "sets", *REFINE_ARGS, "--link", "symlink")
    run_cli("export-swap", cache, root / "sets" / "refine_manifest.json", root / "export",
            "--swap-outlier-threshold", TEST_THRESHOLD, "--min-face-short", "20", *PACK,
            "--no-progress")
    run_cli("embed", root / "batch2", cache, *PACK, "--no-progress")
    return root


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _set(*where_value):
    """A change setting data[k1][k2]...[kn] = value (a missing value deletes the key)."""
    *keys, value = where_value

    def change(data):
        for k in keys[:-1]:
            data = data[k]
        if value is _DELETE:
            del data[keys[-1]]
        else:
            data[keys[-1]] = value
    return change


_DELETE = object()

# (folder, manifest in it, change, command (CACHE/RAW/SETS/EXPORT/QUEUE/RESULTS filled in),
#  what the error line must say)
EXTEND = ["extend", "CACHE", "RAW", "--refine-out", "SETS"]
EXPORT = ["export-swap", "CACHE", "SETS/refine_manifest.json", "EXPORT",
          "--swap-outlier-threshold", TEST_THRESHOLD, *PACK, "--no-progress"]
STAGE = ["audit-multiface", "stage", "EXPORT", "QUEUE", *PACK]
APPLY = ["audit-multiface", "apply", "QUEUE", "RESULTS"]
CASES = {
    "raw person name escapes": (
        "raw", "manifest.json", _set("persons", 0, "name", "../../evil"), EXTEND,
        "persons[0].name '../../evil' is not a person name"),
    "raw persons not a list": (
        "raw", "manifest.json", _set("persons", {}), EXTEND, "persons is dict, not a list"),
    "raw persons missing": (
        "raw", "manifest.json", _set("persons", _DELETE), EXTEND, "persons is missing"),
    "raw placed file escapes": (
        "raw", "manifest.json", _set("persons", 0, "faces", 0, "files", ["../../x.jpg"]),
        EXTEND, "persons[0].faces[0].files[0] '../../x.jpg' is not a plain file name"),
    "raw threshold a string": (
        "raw", "manifest.json", _set("parameters", "threshold", "0.5"), EXTEND,
        "parameters.threshold is str, not a number"),
    "raw link unknown": (
        "raw", "manifest.json", _set("parameters", "link", "../../evil"), EXTEND,
        "parameters.link '../../evil' is not one of"),
    "refine faceset name escapes": (
        "sets", "refine_manifest.json", _set("facesets", 0, "name", "../../../evil"), EXTEND,
        "facesets[0].name '../../../evil' is not a faceset name"),
    "refine facesets missing (extend)": (
        "sets", "refine_manifest.json", _set("facesets", _DELETE), EXTEND,
        "facesets is missing"),
    "refine facesets missing (export)": (
        "sets", "refine_manifest.json", _set("facesets", _DELETE), EXPORT,
        "facesets is missing"),
    "refine faces a number": (
        "sets", "refine_manifest.json", _set("facesets", 1, "faces", 5), EXPORT,
        "facesets[1].faces is int, not a list"),
    "refine face key a number": (
        "sets", "refine_manifest.json", _set("facesets", 0, "faces", 2, "key", 7), EXPORT,
        "facesets[0].faces[2].key is int, not a string"),
    "refine min_faces a string": (
        "sets", "refine_manifest.json", _set("parameters", "min_faces", "many"), EXTEND,
        "parameters.min_faces is str, not a number"),
    "refine considered not a list": (
        "sets", "refine_manifest.json", _set("extended", [{"considered": 5}]), EXTEND,
        "extended[0].considered is int, not a list"),
    "faceset face file escapes (stage)": (
        "export/faceset_000", "manifest.json",
        _set("faces", 0, "file", "../../../../etc/passwd"), STAGE,
        "faces[0].file '../../../../etc/passwd' is not a face PNG"),
    "faceset face file escapes (apply)": (
        "export/faceset_000", "manifest.json",
        _set("faces", 0, "file", "../../../../etc/passwd"), APPLY,
        "faces[0].file '../../../../etc/passwd' is not a face PNG"),
    "faceset centroid a string (export again)": (
        "export/faceset_001", "manifest.json", _set("centroid", "abc"), EXPORT,
        "centroid is str, not a list"),
    "faceset centroid NaN (apply)": (
        "export/faceset_001", "manifest.json", _set("centroid", 0, float("nan")), APPLY,
        "centroid[0] nan is not a finite number"),
    "faceset dropped entry not an object": (
        "export/faceset_001", "manifest.json", _set("dropped", ["x"]), EXPORT,
        "dropped[0] is str, not an object"),
    "faceset name escapes": (
        "export/faceset_001", "manifest.json", _set("name", "../evil"), APPLY,
        "name '../evil' is not a faceset name"),
    "top listing escapes": (
        "export", "manifest.json", _set("facesets", 0, "name", "../../evil"), STAGE,
        "facesets[0].name '../../evil' is not a faceset name"),
    "top audit section not a list": (
        "export", "manifest.json", _set("multiface_audit", "x"), APPLY,
        "multiface_audit is str, not a list"),
    "version not a number": (
        "export", "manifest.json", _set("version", [1]), APPLY,
        "version [1] is not a number"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tampered_manifest_is_one_error_line_and_writes_nothing(outputs, tmp_path, case):
    folder, name, change, command, message = CASES[case]
    work = tmp_path / "a" / "b" / "c"        # room for ../../ to land inside tmp_path
    for d in ("raw", "sets", "export"):
        shutil.copytree(outputs / d, work / d, symlinks=True)
    places = {"CACHE": outputs / "c.npz", "RAW": work / "raw", "SETS": work / "sets",
              "EXPORT": work / "export", "QUEUE": tmp_path / "q.json",
              "RESULTS": tmp_path / "r.jsonl"}
    if "QUEUE" in command and "stage" not in command:   # a queue staged before the edit
        run_cli("audit-multiface", "stage", work / "export", places["QUEUE"], *PACK)
        items = json.loads(places["QUEUE"].read_text())["items"]
        places["RESULTS"].write_text("".join(
            json.dumps({"id": it["id"], "path": it["path"], "faces": 2, "scores": [0.9, 0.8]})
            + "\n"
            for it in items))
    target = work / folder / name
    _edit(target, change)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    def fill(arg: str):
        head, _, tail = arg.partition("/")
        return (places[head] / tail if tail else places[head]) if head in places else arg

    proc = run_cli(*map(fill, command), check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert str(target) in lines[0] and message in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    # nothing written: the same files everywhere (nothing outside, nothing inside)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path.parent / "evil").exists() and not list(tmp_path.rglob("evil*"))
    for fsz in (work / "export").rglob("*.fsz"):
        assert all(not data.startswith(b"root:") for _, data in read_fsz(fsz).pngs)


def test_tampered_audit_plan_is_refused(outputs, tmp_path):
    """The plan a killed apply leaves is read back as untrusted too."""
    from facesets.formats.manifest import AUDIT_PLAN_FILE as PLAN_NAME

    export = tmp_path / "export"
    shutil.copytree(outputs / "export", export, symlinks=True)
    queue, results = tmp_path / "q.json", tmp_path / "r.jsonl"
    run_cli("audit-multiface", "stage", export, queue, *PACK)
    first = json.loads(queue.read_text())["items"][0]
    results.write_text(json.dumps({"id": first["id"], "path": first["path"], "faces": 0,
                                   "scores": []})
                       + "\n")
    plan = {"format": "face-sets/audit-plan", "version": 1, "run_id": "x", "queue": str(queue),
            "results": str(results), "counts": {}, "facesets": ["faceset_000"],
            "drops": [{"faceset": "faceset_000", "file": "faces/000.png",
                       "moved_to": "../../../evil.png", "faces": 0}]}
    (export / PLAN_NAME).write_text(json.dumps(plan))
    proc = run_cli("audit-multiface", "apply", queue, results, check=False)
    assert proc.returncode == 2
    assert "drops[0].moved_to '../../../evil.png' is not a dropped PNG" in proc.stderr
    assert str(export / PLAN_NAME) in proc.stderr
    assert (export / "faceset_000" / "faces" / "000.png").is_file()
    # moved_to would land beside this test's folder: nothing named evil.png anywhere there
    assert not list(tmp_path.parent.rglob("evil.png"))
