"""The user's month (issue 22's scenario): one library grown by every command, chained the way
a user's script chains them, on real photos from ../shared, the offline pack, real
subprocesses, the review server over HTTP and the fake Immich server on 127.0.0.1.

`run` on folder A -> import two hand-sorted people -> `discover` on a mixed folder -> the
occlusion filter applied -> consolidate -> a rename on the review server -> new photos (known
people and one new person) into A and the same `run` again -> Immich finalize twice -> eras
-> `undo` twice. After every step: exit 0, the library agrees with the disk
(tests/library_check.py), no identity changes its person or its number, no face curated out
comes back, no setting is passed again, and the history only grows.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from conftest import FACES, PACK, ROOT, TEST_THRESHOLD, run_cli
from library_check import check_library, load
from test_eras import dated_copy

# `run` is given its thresholds and gates once (testpack_s has none built in; the LFW faces
# are small); nothing of it is passed again by any later command
RUN_SETTINGS = ["--threshold", TEST_THRESHOLD, "--initial-threshold", TEST_THRESHOLD,
                "--merge-threshold", "0.5", "--outlier-threshold", TEST_THRESHOLD,
                "--swap-outlier-threshold", TEST_THRESHOLD, "--min-short", "40",
                "--min-face-short", "40", "--min-faces", "5", "--min-blur", "0",
                "--min-det-score", "0.5", "--engine", "exact"]
IN_A = ["Ariel_Sharon", "Colin_Powell", "Tony_Blair", "George_W_Bush"]
SORTED = ["Hugo_Chavez", "Jacques_Chirac"]          # hand-sorted folders: import-folders
MIXED = ["Donald_Rumsfeld", "Gerhard_Schroeder"]     # one flat folder: discover
NEW = "Vladimir_Putin"                               # arrives in A later: a new identity
# the Tony_Blair photos carry capture dates (eras reads them): 1995-2004
DATED = "Tony_Blair"


def photos(person: str, first: int, last: int) -> list[Path]:
    return sorted((FACES / person).glob("*.jpg"))[first:last]


def copy_into(dest: Path, person: str, first: int, last: int, flat: bool = False) -> None:
    for k, p in enumerate(photos(person, first, last), first):
        target = dest / (p.name if flat else Path(person) / p.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if person == DATED:
            dated_copy(p, target, 1995 + k)
        else:
            shutil.copy2(p, target)


def mask_lower_face(src: Path, dest: Path) -> None:
    """A photo of someone with a dark scarf over mouth and chin (the occlusion stand-in
    classifier of tests/onnx_models.py scores a dark lower half as occluded)."""
    from PIL import Image, ImageDraw

    im = Image.open(src).convert("RGB")
    ImageDraw.Draw(im).rectangle([30, 145, 220, 250], fill=(10, 10, 10))
    dest.parent.mkdir(parents=True, exist_ok=True)
    im.save(dest, quality=95)


class Library:
    """What the test knows of the library between steps: each identity's person, the faces
    curated out, the history's run ids."""

    def __init__(self, swap: Path):
        self.swap = swap
        self.person: dict[str, str] = {}      # faceset name -> LFW person, once seen
        self.label: dict[str, str] = {}       # faceset name -> NAME.txt label, once named
        self.curated_out: set[str] = set()    # keys dropped by a gate or by hand
        self.runs: list[str] = []

    def listing(self) -> dict[str, dict]:
        return {e["name"]: e for e in load(self.swap / "manifest.json")["facesets"]}

    def faceset(self, name: str) -> dict:
        return load(self.swap / self.listing()[name]["manifest"])

    def counts(self) -> dict[str, int]:
        return {n: e["faces"] for n, e in self.listing().items()}

    def check(self, step: str, proc: subprocess.CompletedProcess) -> None:
        """After every step: exit 0, agreement with the disk, identities unmixed and kept,
        nothing curated out returned, the history only grown."""
        assert proc.returncode == 0, f"{step}:\n{proc.stdout}\n{proc.stderr}"
        out = proc.stdout + proc.stderr
        # no setting is asked for again (nothing is passed again by the test)
        assert "ESTIMATED" not in out and "needs --" not in out, f"{step}: {out}"
        check_library(self.swap)
        top = load(self.swap / "manifest.json")
        for name, entry in self.listing().items():
            m = load(self.swap / entry["manifest"])
            people = Counter(person_of(f) for f in m["faces"])
            assert len(people) <= 1, f"{step}: {name} mixes {dict(people)}"
            if people:
                (person,) = people
                assert self.person.setdefault(name, person) == person, \
                    f"{step}: {name} was {self.person[name]}, now {person}"
            keys = {f["key"] for f in m["faces"]}
            back = keys & self.curated_out
            assert not back, f"{step}: curated-out faces came back into {name}: {back}"
            self.curated_out |= {d["key"] for d in m["dropped"] if isinstance(d.get("key"), str)
                                 and d.get("reason") not in ("not_in_cache",)}
            label = (self.swap / name / "NAME.txt").read_text().strip() \
                if (self.swap / name / "NAME.txt").is_file() else ""
            if name in self.label:
                assert label.splitlines()[0] == self.label[name], f"{step}: {name} renamed"
        ids = [e["id"] for e in top.get("runs", [])]
        assert ids[:len(self.runs)] == self.runs, f"{step}: history lost runs"
        self.runs = ids

    def masked_keys(self) -> set[str]:
        top = load(self.swap / "manifest.json")
        keys = set()
        for rec in top.get("masked", []):
            keys |= {f["key"] for f in load(self.swap / rec["moved_to"] / "manifest.json")["faces"]}
        return keys


def person_of(face: dict) -> str:
    """The LFW person of a face entry: the folder (or, for a flat folder, the file name) of
    its photo."""
    name = Path(face["path"]).name
    m = re.match(r"(.+)_\d{4}\.jpg$", name)
    assert m, face["path"]
    return m.group(1)


def test_a_month_of_one_library(tmp_path):
    from immich_server import KEY, FakeAsset, FakeImmich
    from onnx_models import occlusion_classifier

    a, out, cache = tmp_path / "A", tmp_path / "out", tmp_path / "c.npz"
    swap = out / "swap_ready"
    work = tmp_path / "work"
    env = {"FACESETS_WORK_DIR": str(work)}
    for person in IN_A:
        copy_into(a, person, 0, 6)
    mask_lower_face(photos("Colin_Powell", 6, 7)[0], a / "Colin_Powell" / "Colin_Powell_9001.jpg")
    lib = Library(swap)

    # day 1: run on A
    lib.check("run", run_cli("run", a, out, "--cache", cache, *PACK, *RUN_SETTINGS,
                             "--no-progress", env=env, check=False))
    first = lib.counts()
    assert len(first) == 4 and all(n >= 5 for n in first.values()), first

    # import two hand-sorted people; discover in a mixed folder (embedded first)
    sorted_, mixed = tmp_path / "sorted", tmp_path / "mixed"
    for person in SORTED:
        copy_into(sorted_, person, 0, 8)
    for person in MIXED:
        copy_into(mixed, person, 0, 8, flat=True)
    for folder in (sorted_, mixed):
        run_cli("embed", folder, cache, "--no-progress", env=env)
    lib.check("import-folders", run_cli("library", "import", swap, cache, sorted_,
                                        "--no-progress", env=env, check=False))
    lib.check("discover", run_cli("library", "discover", swap, cache, mixed, "--no-progress",
                                  env=env, check=False))
    assert len(lib.counts()) == 8, lib.counts()

    # the occlusion filter: stage, score (an ONNX stand-in classifier), apply
    q, res, scores = tmp_path / "occ_q.json", tmp_path / "occ_r.jsonl", tmp_path / "occ.json"
    model = occlusion_classifier(tmp_path / "occ.onnx")
    run_cli("occlusion", "stage", swap, q, env=env)
    run_cli("occlusion", "score", q, res, "--scorer", f"onnx:{model}", "--no-progress", env=env)
    run_cli("occlusion", "merge", res, scores, env=env)
    # the stand-in scores the scarf 0.15, every other face of these photos under 0.05
    applied = run_cli("occlusion", "apply", scores, "--image-threshold", "0.1", env=env,
                      check=False)
    lib.check("occlusion apply", applied)
    scarf = [d for n in lib.listing() for d in lib.faceset(n)["dropped"]
             if Path(d.get("path", "")).name == "Colin_Powell_9001.jpg"]
    assert scarf and scarf[0]["reason"].startswith("occlu"), applied.stdout

    # consolidate: nothing here is one person twice
    lib.check("consolidate", run_cli("library", "consolidate", swap, env=env, check=False))

    # a rename on the review page (its HTTP API, as the page posts it)
    ariel = next(n for n, p in lib.person.items() if p == "Ariel_Sharon")
    review = subprocess.Popen([sys.executable, str(ROOT / "sort_faces.py"), "library", "review", str(swap),
                               "--no-browser"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                              env=dict(os.environ, **env))
    try:
        line = review.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=(\S+)", line)
        assert m, line
        import urllib.request
        req = urllib.request.Request(
            f"http://127.0.0.1:{m.group(1)}/api/rename", method="POST",
            data=json.dumps({"faceset": ariel, "name": "Grandpa Ariel"}).encode(),
            headers={"Content-Type": "application/json", "X-Review-Token": m.group(2)})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
    finally:
        review.terminate()
        review.wait(10)
    lib.label[ariel] = "Grandpa Ariel"
    lib.check("review rename", subprocess.CompletedProcess([], 0, "", ""))
    before_grow = lib.counts()

    # a month later: more photos of known people and a new person in A; the same run
    for person in IN_A:
        copy_into(a, person, 6, 8)
    copy_into(a, NEW, 0, 7)
    again = run_cli("run", a, out, "--cache", cache, "--no-progress", env=env, check=False)
    lib.check("run again", again)
    grown = lib.counts()
    for name, n in before_grow.items():
        assert name in grown, f"{name} is gone after the second run:\n{again.stdout}"
        if lib.person[name] in IN_A:
            assert grown[name] > n, f"{name} did not grow:\n{again.stdout}"
        else:
            assert grown[name] >= n
    new = [n for n in grown if n not in before_grow]
    assert [lib.person[n] for n in new] == [NEW], again.stdout
    highest = max(int(n.split("_")[1]) for n in before_grow)
    assert int(new[0].split("_")[1]) > highest
    assert not lib.masked_keys() & {f["key"] for n in grown for f in lib.faceset(n)["faces"]}
    # and once more with nothing new: nothing changes
    runs_before = list(lib.runs)
    still = run_cli("run", a, out, "--cache", cache, "--no-progress", env=env, check=False)
    lib.check("run with nothing new", still)
    assert lib.counts() == grown and lib.runs == runs_before, still.stdout

    # Immich, twice: one more photo of two known people each time (worker mode, then
    # in-process), nothing passed again
    def asset(n: int, p: Path) -> FakeAsset:
        return FakeAsset(f"a{n:04d}-5f1c", f"/up/{p.parent.name}/{p.name}", p.read_bytes(),
                         250, 250, [(70.0, 65.0, 180.0, 185.0)], False)

    fake = FakeImmich([asset(1, photos("Hugo_Chavez", 8, 9)[0]),
                       asset(2, photos("George_W_Bush", 8, 9)[0])]).start()
    ienv = dict(env, IMMICH_URL=fake.url, IMMICH_API_KEY=KEY)
    try:
        one = subprocess.run(["bash", str(ROOT / "work" / "finalize_immich.sh"), "alice",
                              "--cache", str(cache), "--out", str(out)],
                             env=dict(os.environ, WIN_PYTHON=sys.executable,
                                      PYTHON=sys.executable, **ienv),
                             cwd=ROOT, capture_output=True, text=True)
        lib.check("immich finalize (worker)", one)
        after_first_finalize = lib.counts()
        fake.assets += [asset(3, photos("Hugo_Chavez", 9, 10)[0]),
                        asset(4, photos("George_W_Bush", 9, 10)[0])]
        fake.by_id = {x.id: x for x in fake.assets}
        two = run_cli("immich", "finalize", "alice", "--cache", cache, "--out", out,
                      env=ienv, check=False)
        lib.check("immich finalize (in-process)", two)
    finally:
        fake.stop()
    after_immich = lib.counts()
    for person in ("Hugo_Chavez", "George_W_Bush"):
        name = next(n for n, p in lib.person.items() if p == person)
        assert after_immich[name] >= grown[name] + 1, (one.stdout, two.stdout)

    # eras of the dated person, then undo twice (eras, then the second finalize's run)
    blair = next(n for n, p in lib.person.items() if p == DATED)
    runs_before_eras = len(lib.runs)
    eras = run_cli("faceset", "eras", "build", swap, cache, blair, "--min-anchor", "4",
                   "--min-era-faces", "4", "--no-progress", env=env, check=False)
    lib.check("eras", eras)
    assert len(lib.runs) == runs_before_eras + 1, eras.stdout
    # undo twice: the new spelling, then the old name a user's script still has; each
    # names the run it reversed, the newest still in effect: eras, then the last grow
    first_undo = run_cli("library", "undo", swap, env=env, check=False)
    lib.check("undo 1", first_undo)
    assert "reversed run" in first_undo.stdout and "(eras," in first_undo.stdout, \
        first_undo.stdout
    assert lib.counts() == after_immich
    second_undo = run_cli("undo", swap, env=env, check=False)
    lib.check("undo 2", second_undo)
    assert "reversed run" in second_undo.stdout and "(grow," in second_undo.stdout, \
        second_undo.stdout
    assert lib.counts() == after_first_finalize, (lib.counts(), after_first_finalize)
