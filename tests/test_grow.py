"""`run SRC OUT` on an existing library grows it (issue 22, item 1): after `import-folders`
and `discover` made facesets in OUT/swap_ready, the same `run` again embeds SRC's new
photos, extends raw/ and facesets/ (numbering kept) and grows the library (`grow`): new
photos of known people join their faceset whatever made it, a new person becomes a new
faceset numbered past the highest; nothing is renumbered or renamed, faces dropped by hand
stay out, `undo` reverses the grow, a kill at any commit and a re-run give the same
library. Real photos from ../shared, the offline pack, real subprocesses; every library is
checked against the disk (tests/library_check.py)."""
from __future__ import annotations

import hashlib
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FACES, LOW_GATES, PACK, ROOT, TEST_THRESHOLD, run_cli
from immich_server import KEY, FakeImmich
from killharness import KillHarness, Scenario, compare, state
from library_check import check_library, load

THRESHOLDS = ["--threshold", TEST_THRESHOLD, "--initial-threshold", TEST_THRESHOLD,
              "--merge-threshold", "0.5", "--outlier-threshold", TEST_THRESHOLD,
              "--swap-outlier-threshold", TEST_THRESHOLD]
RUN = [*PACK, *THRESHOLDS, *LOW_GATES, "--min-faces", "4", "--min-face-short", "20",
       "--flush-every", "4", "--no-progress"]
EXPORT = ["--swap-outlier-threshold", TEST_THRESHOLD, "--min-face-short", "20", "--no-progress"]
IMPORT = ["--loose-threshold", "0.75", "--tight-threshold", TEST_THRESHOLD,
          "--route-threshold", TEST_THRESHOLD, *EXPORT]
DISCOVER = ["--near-threshold", TEST_THRESHOLD, "--initial-threshold", TEST_THRESHOLD,
            "--merge-threshold", "0.5", "--outlier-threshold", TEST_THRESHOLD, *LOW_GATES,
            "--min-faces", "4", *EXPORT]
# SRC's people (run), the hand-sorted ones (import-folders), the mixed folder's (discover)
RUN_PEOPLE = ("Ariel_Sharon", "Colin_Powell", "Tony_Blair")
SORTED = ("Hugo_Chavez", "Jacques_Chirac")
MIXED = ("Donald_Rumsfeld", "George_W_Bush")
NEW_PERSON = "Gerhard_Schroeder"


def photos(name: str, first: int, last: int) -> list[Path]:
    return sorted((FACES / name).glob("*.jpg"))[first:last]


def copy_into(dest: Path, files: list[Path]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, dest / f.name)


def person(face: dict) -> str:
    """Ground truth of a face entry: the LFW person of its photo (the file name)."""
    return Path(face["path"]).stem.rsplit("_", 1)[0]


def run_argv(w: Path) -> list:
    return ["run", w / "A", w / "OUT", "--cache", w / "c.npz", *RUN]


def build_library(w: Path) -> None:
    """In ``w``: `run A OUT` over three people, then import-folders of two hand-sorted
    people and discover over a mixed folder of two more (their photos embedded into run's
    cache first, as a user does)."""
    for name in RUN_PEOPLE:
        copy_into(w / "A" / name, photos(name, 0, 6))
    for name in SORTED:
        copy_into(w / "p" / "sorted" / name, photos(name, 0, 6))
    copy_into(w / "p" / "mixed", [f for name in MIXED for f in photos(name, 0, 6)])
    run_cli(*run_argv(w))
    run_cli("embed", w / "p", w / "c.npz", *PACK, "--no-progress")
    run_cli("import-folders", w / "c.npz", w / "p" / "sorted", "--into", w / "OUT" / "swap_ready",
            *IMPORT)
    run_cli("discover", w / "c.npz", w / "p" / "mixed", "--into", w / "OUT" / "swap_ready",
            *DISCOVER)


def add_new_photos(w: Path) -> None:
    """New photos in A: of a person run found, of a person import-folders made, and six of
    a person face-sets has not seen."""
    copy_into(w / "A" / "later", photos("Ariel_Sharon", 6, 10) + photos("Hugo_Chavez", 6, 10)
              + photos(NEW_PERSON, 0, 6))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The library before the new photos (read-only: copy it with ``fresh``)."""
    w = tmp_path_factory.mktemp("grow") / "w"
    build_library(w)
    return w


def fresh(template: Path, dest: Path) -> Path:
    """A copy of the template at ``dest``, with the absolute paths the cache and the
    manifests recorded still naming the template's photos (they are the same files)."""
    shutil.copytree(template, dest, symlinks=True)
    return dest


def facesets(lib: Path) -> dict[str, dict]:
    return {e["name"]: load(lib / e["manifest"]) for e in load(lib / "manifest.json")["facesets"]}


def tree(root: Path, skip=(".runs", "_added")) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()
            and not set(p.relative_to(root).parts) & set(skip)}


def owner(m: dict) -> str:
    """The one person a faceset's faces show (asserts there is one)."""
    people = {person(f) for f in m["faces"]}
    assert len(people) == 1, (m["name"], people)
    return people.pop()


def test_the_same_run_after_import_and_discover_keeps_every_faceset(template, tmp_path):
    """The issue's reproduction: no new photo, the same `run A OUT` after import-folders and
    discover: exit 0, no faceset renumbered, re-exported or removed."""
    w = fresh(template, tmp_path / "w")
    lib = w / "OUT" / "swap_ready"
    before = facesets(lib)
    refine_before = load(w / "OUT" / "facesets" / "refine_manifest.json")["facesets"]
    r = run_cli(*run_argv(w))
    assert "growing it" in r.stdout and "export-swap:" not in r.stdout
    after = facesets(lib)
    check_library(lib)
    assert sorted(after) == sorted(before), r.stdout
    for n, m in before.items():
        assert owner(after[n]) == owner(m)
        assert {f["key"] for f in m["faces"]} <= {f["key"] for f in after[n]["faces"]}
    refine_after = load(w / "OUT" / "facesets" / "refine_manifest.json")["facesets"]
    for old, now in zip(refine_before, refine_after):   # refine's numbering kept
        assert old["name"] == now["name"] and owner(old) == owner(now)
    # --rebuild keeps today's refusal, now before raw/ and facesets/ are rewritten
    outputs = tree(w / "OUT")
    refused = run_cli(*run_argv(w), "--rebuild", check=False)
    assert refused.returncode == 2 and refused.stderr.count("error:") == 1, refused.stderr
    assert "made by library import, discover or grow" in refused.stderr
    assert tree(w / "OUT") == outputs


def test_the_same_run_again_grows_the_library_and_renumbers_nothing(template, tmp_path):
    w = fresh(template, tmp_path / "w")
    lib = w / "OUT" / "swap_ready"
    before = facesets(lib)
    names_txt = {n: (lib / n / "NAME.txt").read_bytes() for n in before}
    refine_before = load(w / "OUT" / "facesets" / "refine_manifest.json")["facesets"]
    raw_before = load(w / "OUT" / "raw" / "manifest.json")["persons"]
    made_by = {n: (m.get("added_by") or {}).get("step", "export") for n, m in before.items()}
    assert sorted(set(made_by.values())) == ["discover", "export", "import-folders"], made_by
    add_new_photos(w)

    r = run_cli(*run_argv(w))
    assert f"holds a library of {len(before)} facesets: growing it" in r.stdout
    assert "run: grow:" in r.stdout and "run: extend:" in r.stdout
    assert "cluster:" not in r.stdout and "export-swap:" not in r.stdout
    after = facesets(lib)
    check_library(lib)
    # every faceset keeps its name, NAME.txt, label, bundle names and every face it had
    for n, m in before.items():
        assert n in after
        assert (lib / n / "NAME.txt").read_bytes() == names_txt[n]
        assert after[n].get("label") == m.get("label")
        assert after[n]["bundles"]["top"] == m["bundles"]["top"]
        assert {f["key"] for f in m["faces"]} <= {f["key"] for f in after[n]["faces"]}
        assert owner(after[n]) == owner(m)
    # the new photos of known people joined their person: run's Ariel, import's Hugo
    by_owner = {owner(m): n for n, m in before.items()}
    for name in ("Ariel_Sharon", "Hugo_Chavez"):
        n = by_owner[name]
        joined = {f["key"] for f in after[n]["faces"]} - {f["key"] for f in before[n]["faces"]}
        assert len(joined) == 4, (name, r.stdout)
        assert after[n]["history"][-1]["step"] == "grow"
    # the new person: one new faceset numbered past the highest
    new = sorted(set(after) - set(before))
    assert new == [f"faceset_{max(int(n[8:11]) for n in before) + 1:03d}"], r.stdout
    assert owner(after[new[0]]) == NEW_PERSON and len(after[new[0]]["faces"]) == 6
    top = load(lib / "manifest.json")
    assert top["runs"][-1]["step"] == "grow" and top["added"][-1]["step"] == "grow"
    # raw/ and facesets/ extended with their numbering kept
    refine_after = load(w / "OUT" / "facesets" / "refine_manifest.json")["facesets"]
    assert [f["name"] for f in refine_after[:len(refine_before)]] == \
        [f["name"] for f in refine_before]
    for old, now in zip(refine_before, refine_after):
        assert {f["key"] for f in old["faces"]} <= {f["key"] for f in now["faces"]}
    raw_after = load(w / "OUT" / "raw" / "manifest.json")["persons"]
    assert [p["name"] for p in raw_after[:len(raw_before)]] == [p["name"] for p in raw_before]

    # a third run changes nothing
    snapshot = tree(w / "OUT")
    again = run_cli(*run_argv(w))
    assert tree(w / "OUT") == snapshot, again.stdout
    # and grow itself, asked directly, finds nothing new
    g = run_cli("library", "grow", lib, w / "c.npz", *PACK, "--no-progress")
    assert "grow: nothing new" in g.stdout and "nothing changed" in g.stdout
    assert tree(w / "OUT") == snapshot

    # undo of the grow run restores the previous library: every file, every manifest byte
    # but the top-level manifest's runs[] (which names the grow and its undo)
    grow_run = top["runs"][-1]["id"]
    run_cli("undo", lib, grow_run)
    check_library(lib)
    assert facesets(lib) == before
    restored = tree(lib, skip=(".runs", "_added", "manifest.json", "index.html", "_thumbs"))
    assert restored == tree(template / "OUT" / "swap_ready",
                            skip=(".runs", "_added", "manifest.json", "index.html", "_thumbs"))
    for n in before:
        assert (lib / n / "manifest.json").read_bytes() == \
            (template / "OUT" / "swap_ready" / n / "manifest.json").read_bytes()
    top_now = load(lib / "manifest.json")
    top_was = load(template / "OUT" / "swap_ready" / "manifest.json")
    assert {k: v for k, v in top_now.items() if k != "runs"} == \
        {k: v for k, v in top_was.items() if k != "runs"}

    # `run` respects the undo (its inputs did not change: grow is skipped)...
    assert "grow: done already with these inputs, skipped" in run_cli(*run_argv(w)).stdout
    assert facesets(lib) == before
    # ...but an undone run is as if it never ran: grow finds its faces new again and makes
    # the same facesets with the same faces (built anew beside the parked ones)
    regrow = run_cli("library", "grow", lib, w / "c.npz", *PACK, "--no-progress")
    check_library(lib)
    assert {n: sorted(f["key"] for f in m["faces"]) for n, m in facesets(lib).items()} == \
        {n: sorted(f["key"] for f in m["faces"]) for n, m in after.items()}, regrow.stdout
    assert load(lib / "manifest.json")["runs"][-1]["step"] == "grow"


def test_quarantined_facesets_and_hand_dropped_faces_stay_out(template, tmp_path):
    """A library with a quarantined faceset grows too: the quarantined faceset stays where it
    is, its faces are not offered again; a face dropped by hand never comes back."""
    w = fresh(template, tmp_path / "w")
    lib = w / "OUT" / "swap_ready"
    sets = facesets(lib)
    by_owner = {owner(m): n for n, m in sets.items()}
    colin, ariel = by_owner["Colin_Powell"], by_owner["Ariel_Sharon"]
    run_cli("quarantine", lib, colin)
    worst = max(sets[ariel]["faces"], key=lambda f: f["rank"])
    run_cli("drop-faces", lib, ariel, worst["file"])
    copy_into(w / "A" / "later", photos("Ariel_Sharon", 6, 10))
    # grow --dry-run plans and changes nothing
    run_cli("embed", w / "A", w / "c.npz", *PACK, "--no-progress")
    snapshot = tree(lib, skip=())
    dry = run_cli("library", "grow", lib, w / "c.npz", *PACK, "--dry-run", "--no-progress")
    assert f"{ariel}: +4 faces joined" in dry.stdout and "dry run, nothing changed" in dry.stdout
    assert tree(lib, skip=()) == snapshot
    r = run_cli(*run_argv(w))
    after = facesets(lib)
    check_library(lib)
    assert colin not in after and (lib / "_quarantine" / colin / "manifest.json").is_file()
    assert sorted(after) == sorted(n for n in sets if n != colin), r.stdout
    keys = {f["key"] for f in after[ariel]["faces"]}
    assert worst["key"] not in keys
    assert [d["reason"] for d in after[ariel]["dropped"] if d["key"] == worst["key"]] == \
        ["review"]
    assert len(keys) == len(sets[ariel]["faces"]) - 1 + 4, r.stdout


def test_kill_at_commits_of_the_incremental_run_then_a_rerun_gives_the_same_library(
        tmp_path):
    def build(w: Path) -> None:
        build_library(w)
        add_new_photos(w)

    # run_state.json's summaries count what each invocation did (a re-run after a kill
    # finds part of the work done)
    scenario = Scenario("grow-run", build, run_argv, caches=("c.npz",),
                        json_ignore={"run_state.json": frozenset({"summary"})})
    h = KillHarness(scenario, tmp_path)
    h.prepare()
    n = h.run_reference()
    check_library(h.w / "OUT" / "swap_ready")
    commits = [h.short(c) for c in h.commits]

    def first(pred) -> int:
        return next(k for k, c in enumerate(commits, 1) if pred(c))

    def last(pred) -> int:
        return max(k for k, c in enumerate(commits, 1) if pred(c))

    moves = [k for k, c in enumerate(commits, 1) if " -> " in c]
    # one kill in each phase: embed (a segment), extend (between refine's manifest and
    # raw's, and after both), grow's build (a joined crop, a new faceset's crop), its run
    # record, its first and last move, a faceset's manifest install, the top-level manifest
    # (the run's commit), the report; and one more anywhere in the grow (seeded)
    points = {first(lambda c: "seg-" in c), first(lambda c: c.endswith("refine_manifest.json")),
              first(lambda c: c == "OUT/raw/manifest.json"),
              first(lambda c: ".grow-" in c and c.endswith(".png")),
              first(lambda c: ".partial/faceset_" in c and ".grow-" not in c),
              first(lambda c: "/.runs/0" in c and "partial" not in c), moves[0], moves[-1],
              first(lambda c: c.endswith("faceset_000/manifest.json") and "_added" not in c),
              last(lambda c: c == "OUT/swap_ready/manifest.json"),
              first(lambda c: c.endswith("index.html"))}
    grow_commits = [k for k, c in enumerate(commits, 1) if "swap_ready" in c]
    points.add(random.Random(n).choice(grow_commits))
    failures = []
    for k in sorted(points):
        res = h.try_kill(k)
        if res.outcome != "equal":
            failures.append(res.line())
        else:
            check_library(h.w / "OUT" / "swap_ready")
    # and at two moments of the clock (seeded), wherever the run is then
    for delay in sorted(random.Random(n).uniform(1.0, 8.0) for _ in range(2)):
        h.reset()
        proc = subprocess.Popen([sys.executable, str(ROOT / "sort_faces.py"),
                                 *map(str, run_argv(h.w))], cwd=h.w,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        again = h.run(tag=f"after{delay:.1f}s")
        diffs = [] if again.rc == 0 else [f"re-run exited {again.rc}: {again.tail()}"]
        diffs += compare(h.reference, state(h.w, scenario))
        if diffs:
            failures.append(f"killed after {delay:.1f} s: " + "; ".join(diffs[:8]))
    assert not failures, "\n".join(failures) + f"\n{n} commits: {commits}"


# ---- immich finalize: grows the library, any number of times, in both modes --------------
def immich_assets(first_id: int, files: list[Path]):
    from test_immich import asset

    return [asset(n, p, f"/up/{p.parent.name}/{p.name}") for n, p in enumerate(files, first_id)]


def finalize(w: Path, fake, *extra, worker: bool = False):
    env = {"IMMICH_URL": fake.url, "IMMICH_API_KEY": KEY, "FACESETS_WORK_DIR": str(w / "work")}
    return run_cli("immich", "finalize", "alice", "--cache", w / "c.npz", "--out", w / "OUT",
                   *PACK, f"--export-args={' '.join(EXPORT)}",
                   f"--discover-args={' '.join(DISCOVER)}", "--extend-args=--engine exact",
                   *(["--worker-python", sys.executable] if worker else []), *extra,
                   env=env, check=False)


def test_finalize_grows_a_library_with_identity_op_facesets_twice_in_both_modes(template,
                                                                                tmp_path):
    w = fresh(template, tmp_path / "w")
    lib = w / "OUT" / "swap_ready"
    before = facesets(lib)
    by_owner = {owner(m): n for n, m in before.items()}
    fake = FakeImmich(immich_assets(1, photos("Hugo_Chavez", 6, 10)
                                    + photos(NEW_PERSON, 0, 6))).start()
    try:
        first = finalize(w, fake)
        assert first.returncode == 0, first.stdout + first.stderr
        once = facesets(lib)
        fake.assets += immich_assets(40, photos(NEW_PERSON, 6, 8))
        fake.by_id = {a.id: a for a in fake.assets}
        second = finalize(w, fake, worker=True)
        assert second.returncode == 0, second.stdout + second.stderr
    finally:
        fake.stop()
    twice = facesets(lib)
    check_library(lib)
    for n, m in before.items():     # nothing renumbered: every faceset its person still
        assert owner(once[n]) == owner(m) and owner(twice[n]) == owner(m)
    hugo = by_owner["Hugo_Chavez"]          # made by import-folders
    assert len(once[hugo]["faces"]) == len(before[hugo]["faces"]) + 4, first.stdout
    new = sorted(set(once) - set(before))
    assert len(new) == 1 and owner(once[new[0]]) == NEW_PERSON, first.stdout
    assert sorted(twice) == sorted(once)
    assert len(twice[new[0]]["faces"]) == len(once[new[0]]["faces"]) + 2, second.stdout
    assert "== worker" in second.stdout and "== export" in second.stdout


def test_finalize_makes_and_grows_an_immich_only_library(tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    fake = FakeImmich(immich_assets(1, photos("Ariel_Sharon", 0, 6)
                                    + photos("Colin_Powell", 0, 6))).start()
    run_args = f"--run-args={' '.join(map(str, RUN[len(PACK):]))}"
    try:
        first = finalize(w, fake, run_args)
        assert first.returncode == 0, first.stdout + first.stderr
        made = facesets(w / "OUT" / "swap_ready")
        fake.assets += immich_assets(40, photos("Ariel_Sharon", 6, 9))
        fake.by_id = {a.id: a for a in fake.assets}
        second = finalize(w, fake, run_args)
        assert second.returncode == 0, second.stdout + second.stderr
    finally:
        fake.stop()
    grown = facesets(w / "OUT" / "swap_ready")
    check_library(w / "OUT" / "swap_ready")
    assert sorted(owner(m) for m in made.values()) == ["Ariel_Sharon", "Colin_Powell"]
    assert sorted(grown) == sorted(made)
    ariel = next(n for n, m in made.items() if owner(m) == "Ariel_Sharon")
    assert len(grown[ariel]["faces"]) == len(made[ariel]["faces"]) + 3, second.stdout
    assert all(owner(grown[n]) == owner(m) for n, m in made.items())


# ---- extend's join rule, shared by extend and grow (core/joining.py) ----------------------
@pytest.mark.unit
def test_join_nearest_joins_within_the_average_distance_never_a_second_face_of_a_photo():
    import numpy as np

    from facesets.core.joining import join_nearest
    from facesets.core.selection import FaceSelection

    def unit(*v):
        a = np.array(v, dtype=np.float32)
        return a / np.linalg.norm(a)

    emb = np.stack([unit(1, 0, 0), unit(1, 0.1, 0),          # group 0
                    unit(0, 1, 0), unit(0.1, 1, 0),          # group 1
                    unit(1, 0.2, 0),                         # near group 0, a new photo
                    unit(1, 0.02, 0),                        # near group 0, photo of face 0
                    unit(0, 0, 1),                           # near nobody
                    unit(0.05, 1, 0), unit(0.06, 1, 0)])     # two faces of one photo -> 1
    sha = np.array(["a", "b", "c", "d", "e", "a", "f", "g", "g"])
    sel = FaceSelection(np.arange(9), emb, np.array([f"{s}:{i}" for i, s in enumerate(sha)]),
                        sha, {})
    out = join_nearest(sel, np.array([4, 5, 6, 7, 8]), [[0, 1], [2, 3]], 0.3)
    assert out.tolist() == [0, -1, -1, 1, -1]
    # refine's outlier rule on the centroid: a tight limit keeps the farther faces out
    assert join_nearest(sel, np.array([4]), [[0, 1]], 0.3, 0.001).tolist() == [-1]
    assert join_nearest(sel, np.array([4]), [[0, 1]], 0.3, 0.1).tolist() == [0]
    # no members (a faceset none of whose faces this cache holds): nothing joins it
    assert join_nearest(sel, np.array([4]), [[]], 0.3).tolist() == [-1]
