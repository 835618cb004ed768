"""The first hour of a new user (issue 15): every threshold checked before any work, the
model a cache records used by the commands that read it, a typo'd model answered with the
packs that exist, every step explaining itself, and --help showing every default."""
from __future__ import annotations

import argparse
import shutil
import zipfile
from pathlib import Path

import pytest
from conftest import (FACES, LOW_GATES, PACK, SHARED, TEST_THRESHOLD, all_parsers, needs_shared,
                      run_cli)

T = TEST_THRESHOLD
THRESHOLDS = ["--threshold", T, "--initial-threshold", T, "--merge-threshold", "0.5",
              "--outlier-threshold", T, "--swap-outlier-threshold", T]
PEOPLE = 2


def _photos(dest: Path, people: int = PEOPLE) -> Path:
    for p in sorted(d for d in FACES.iterdir() if d.is_dir())[:people]:
        shutil.copytree(p, dest / p.name)
    return dest


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """`run` on two people with the low gates but refine's --min-faces 6 and export's
    default --min-face-short 100: export leaves both facesets thinner than --min-faces."""
    needs_shared()
    root = tmp_path_factory.mktemp("first_hour")
    src = _photos(root / "family")
    out, cache = root / "out", root / "family.npz"
    args = ["run", src, out, "--cache", cache, *PACK, *THRESHOLDS, *LOW_GATES,
            "--min-faces", "6", "--no-progress"]
    first = run_cli(*args)
    again = run_cli(*args)
    return {"root": root, "src": src, "out": out, "cache": cache, "first": first,
            "again": again}


# ---- 1. any model on the first try --------------------------------------------------------

def test_run_lists_every_missing_threshold_before_any_work(tmp_path):
    needs_shared()
    src = _photos(tmp_path / "photos", 1)
    cache, out = tmp_path / "c.npz", tmp_path / "out"
    r = run_cli("run", src, out, "--cache", cache, *PACK, "--threshold", T, "--no-progress",
                "--no-estimate", check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr
    assert err.count("error:") == 1
    for flag in ("--initial-threshold", "--merge-threshold", "--outlier-threshold",
                 "--swap-outlier-threshold"):
        assert flag in err
    assert "--threshold (" not in err          # given: not asked for
    assert str(cache) in err and "calibrate" in err and f"embed {src}" in err
    assert not cache.exists() and not out.exists() and "embed:" not in r.stdout


def test_step_commands_list_all_their_missing_thresholds_at_once(ran, tmp_path):
    r = run_cli("refine", ran["cache"], tmp_path / "fs", check=False)
    assert r.returncode == 2 and r.stderr.count("error:") == 1
    assert all(f in r.stderr for f in ("--initial-threshold (", "--merge-threshold (",
                                       "--outlier-threshold ("))
    r = run_cli("export-swap", ran["cache"], ran["out"] / "facesets" / "refine_manifest.json",
                tmp_path / "swap", "--candidates", "--raw-manifest",
                ran["out"] / "raw" / "manifest.json", check=False)
    assert r.returncode == 2
    assert "--swap-outlier-threshold (" in r.stderr and "--candidate-match-threshold (" in r.stderr
    assert str(ran["cache"]) in r.stderr and "calibrate" in r.stderr
    assert not (tmp_path / "fs").exists() and not (tmp_path / "swap").exists()


@pytest.mark.unit
def test_outlier_flags_mean_the_same_gate_in_run_and_the_step_commands(capsys):
    from facesets.cli import build_parser

    p = build_parser()
    a = p.parse_args(["run", "s", "o", "--outlier-threshold", "0.6",
                      "--swap-outlier-threshold", "0.4"])
    assert (a.outlier_threshold, a.swap_outlier_threshold) == (0.6, 0.4)
    a = p.parse_args(["export-swap", "c", "r", "o", "--swap-outlier-threshold", "0.4"])
    assert a.swap_outlier_threshold == 0.4
    assert "deprecated" not in capsys.readouterr().err
    a = p.parse_args(["export-swap", "c", "r", "o", "--outlier-threshold", "0.3"])  # old
    assert a.swap_outlier_threshold == 0.3
    assert "--outlier-threshold is deprecated here: use --swap-outlier-threshold" in \
        capsys.readouterr().err
    from facesets.core.thresholds import FLAGS
    assert FLAGS["swap_outlier"] == "--swap-outlier-threshold"


# ---- 2. commands that read a cache use the model it records -------------------------------

def test_enrich_and_export_swap_use_the_caches_own_pack(ran, tmp_path):
    # a fresh (not enriched) cache made with the test pack, then enrich with no --model
    cache = tmp_path / "one.npz"
    run_cli("embed", _photos(tmp_path / "p", 1), cache, *PACK, "--no-progress")
    r = run_cli("enrich", cache, "--no-progress")
    assert "enriched" in r.stdout and "nothing to do" not in r.stdout
    # export-swap with no --model: the detector of the pack that made the cache
    out = tmp_path / "swap"
    r = run_cli("export-swap", ran["cache"], ran["out"] / "facesets" / "refine_manifest.json",
                out, "--swap-outlier-threshold", T, "--no-progress")
    assert "export-swap: 2 facesets" in r.stdout


def test_a_pack_that_is_gone_is_named_with_where_it_was(tmp_path):
    needs_shared()
    root = tmp_path / "models_root"
    shutil.copytree(SHARED / "insightface" / "models" / "testpack_s",
                    root / "models" / "testpack_s")
    cache = tmp_path / "c.npz"
    run_cli("embed", _photos(tmp_path / "p", 1), cache, "--model", "testpack_s",
            "--model-root", root, "--no-progress")
    shutil.rmtree(root)
    r = run_cli("enrich", cache, "--no-progress", check=False,
                env={"HOME": str(tmp_path / "home")})
    assert r.returncode == 2
    assert f"loaded from {root / 'models' / 'testpack_s'}, which is gone" in r.stderr
    assert "--model" in r.stderr


def test_verify_fsz_uses_the_facesets_pack_checks_equal_bundles_once_and_goes_on(ran,
                                                                                  tmp_path):
    swap = tmp_path / "swap_ready"
    shutil.copytree(ran["out"] / "swap_ready", swap)
    r = run_cli("verify-fsz", swap, "--no-progress")   # no --model: testpack_s from manifests
    assert "verify-fsz: 4 of 4 bundles pass" in r.stdout
    assert "similarity to centroid 0." in r.stdout     # the same weights as the centroid
    assert r.stdout.count("checked once") == 2         # each _top30 == its _all
    # a broken bundle fails alone; the ones after it are still checked
    (swap / "aaa_broken.fsz").write_bytes(b"not a zip")
    with zipfile.ZipFile(swap / "faceset_000" / "faceset_000_all.fsz") as zf:
        first = zf.read(zf.namelist()[0])
    with zipfile.ZipFile(swap / "faceset_000" / "extra.fsz", "w") as zf:
        zf.writestr("0.png", first)
    r = run_cli("verify-fsz", swap, "--no-progress", check=False)
    assert r.returncode == 1
    assert f"FAIL {swap / 'aaa_broken.fsz'}: " in r.stdout
    assert "verify-fsz: 5 of 6 bundles pass" in r.stdout


# ---- 3. a typo'd model, a failed download --------------------------------------------------

def test_a_typod_model_lists_the_packs_under_the_root(tmp_path):
    needs_shared()
    src = _photos(tmp_path / "p", 1)
    r = run_cli("embed", src, tmp_path / "c.npz", "--model", "testpack",
                "--model-root", SHARED / "insightface", "--no-progress", check=False)
    assert r.returncode == 2
    assert "(packs in " in r.stderr and "testpack_s" in r.stderr
    assert "testpack.zip" not in r.stderr and "download_path" not in r.stdout   # never tried
    # --model-root one level too deep: named, and no models/models/ left behind
    deep = tmp_path / "root" / "models"
    shutil.copytree(SHARED / "insightface" / "models", deep)
    r = run_cli("embed", src, tmp_path / "c.npz", "--model", "testpack_s",
                "--model-root", deep, "--no-progress", check=False)
    assert r.returncode == 2 and f"here {deep.parent}" in r.stderr
    assert not (deep / "models").exists()


def test_a_failed_download_leaves_no_folder(tmp_path):
    needs_shared()
    home, root = tmp_path / "home", tmp_path / "new_root"
    home.mkdir()
    offline = {"HOME": str(home), "HTTPS_PROXY": "http://127.0.0.1:9",
               "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}
    src = _photos(tmp_path / "p", 1)
    for extra in ([], ["--model-root", root]):
        r = run_cli("embed", src, tmp_path / "c.npz", "--model", "buffalo_sc", *extra,
                    "--no-progress", check=False, env=offline, timeout=120)
        assert r.returncode == 2 and "download failed" in r.stderr, r.stderr
    assert list(home.iterdir()) == [] and not root.exists()


# ---- 4.-8. every step explains itself ------------------------------------------------------

def test_refine_prints_drop_reasons_and_the_gate_value_that_keeps_faces(ran, tmp_path):
    r = run_cli("refine", ran["cache"], tmp_path / "fs", "--initial-threshold", T,
                "--merge-threshold", "0.5", "--outlier-threshold", T)   # default gates
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("refine:"))
    assert "-> 0 facesets" in line and "small " in line and "too_few_images " in line
    assert "refine: the gates kept 0 of" in r.stdout
    assert "--min-short " in r.stdout and "would pass 80% of the faces (now 90" in r.stdout
    assert "--min-faces " in r.stdout and "(now 15; the largest groups have" in r.stdout


def test_run_warns_about_thin_facesets_and_ends_with_a_table_and_next_steps(ran):
    first = ran["first"]
    assert "faceset_000 has" in first.stderr
    assert "fewer than refine's --min-faces 6" in first.stderr
    out = first.stdout
    table = out[out.index("run: facesets"):]
    assert "faceset_000" in table and "faceset_001" in table and "small " in table
    assert "faceset_000/faceset_000_top30.fsz, faceset_000/faceset_000_all.fsz" in table
    assert f"verify-fsz {ran['out'] / 'swap_ready'}" in table
    assert "NAME.txt" in table and "roop-unleashed" in table
    assert "run: facesets" in ran["again"].stdout      # shown after a skipped export too


def test_run_ends_with_the_overview_page_and_review_as_next_steps(ran):
    out = ran["first"].stdout
    nxt = out[out.index("next:"):]
    page = ran["out"] / "swap_ready" / "index.html"
    assert f"open {page} in a browser" in nxt and page.is_file()
    assert f"sort_faces.py library review {ran['out'] / 'swap_ready'}" in nxt
    assert nxt.index("index.html") < nxt.index("review") < nxt.index("verify-fsz")


def test_export_swap_given_a_photo_for_the_manifest_names_it(ran, tmp_path):
    photo = sorted(ran["src"].rglob("*.jpg"))[0]
    r = run_cli("export-swap", ran["cache"], photo, tmp_path / "swap",
                "--swap-outlier-threshold", T, check=False)
    assert r.returncode == 2 and r.stderr.count("error:") == 1, r.stderr
    assert f"error: {photo}: not a face-sets/refine manifest (binary data" in r.stderr
    assert "codec" not in r.stderr and not (tmp_path / "swap").exists()


def test_discover_on_a_folder_the_cache_never_saw_says_embed_it_first(ran, tmp_path):
    swap = tmp_path / "swap"
    shutil.copytree(ran["out"] / "swap_ready", swap, symlinks=True)
    before = sorted(p.relative_to(swap) for p in swap.rglob("*"))
    fresh = tmp_path / "new_people"
    shutil.copytree(sorted(d for d in FACES.iterdir() if d.is_dir())[PEOPLE], fresh)
    args = ["--into", swap, "--near-threshold", "0.5", *THRESHOLDS[2:], *LOW_GATES]
    r = run_cli("discover", ran["cache"], fresh, *args, check=False)
    assert r.returncode == 2 and r.stderr.count("error:") == 1, r.stderr
    assert f"error: {fresh.resolve()}: none of its photos is in {ran['cache']}; embed it " \
        f"first: `sort_faces.py embed {fresh.resolve()} {ran['cache']}` (the cache's model), " \
        "then run `library discover` again" in r.stderr
    assert sorted(p.relative_to(swap) for p in swap.rglob("*")) == before
    # a folder the cache holds is planned as before (its faces are in facesets already)
    r = run_cli("discover", ran["cache"], ran["src"], *args, "--dry-run")
    assert "in facesets already" in r.stdout and "error" not in r.stderr


def test_a_no_op_embed_says_nothing_new(ran):
    r = run_cli("embed", ran["src"], ran["cache"], *PACK, "--no-progress")
    assert "nothing new" in r.stdout and "img/s" not in r.stdout


# ---- 9. --help and --version ----------------------------------------------------------------



@pytest.mark.unit
def test_help_has_every_positional_and_every_default():
    from facesets.cli import build_parser

    checked = 0
    for name, p in all_parsers(build_parser()):
        fmt = p._get_formatter()
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._VersionAction,
                              argparse._SubParsersAction)) or a.help == argparse.SUPPRESS:
                continue
            if not a.option_strings:
                assert a.help, f"{name} {a.dest}: positional without help"
            elif a.nargs != 0 and a.default is not None:
                text = fmt._get_help_string(a) % {"default": a.default}
                assert "default" in text, f"{name} {a.option_strings[0]}: default not shown"
                checked += 1
    assert checked > 40


def test_run_help_names_what_a_model_without_defaults_needs_and_version():
    r = run_cli("run", "--help")
    text = " ".join(r.stdout.split())
    assert "Any other pack (--model NAME or a folder) needs --threshold, --initial-threshold, " \
           "--merge-threshold, --outlier-threshold, --swap-outlier-threshold" in text
    assert "(default: the library's setting, else 100.0)" in text and "--min-short" in text
    from facesets import __version__
    assert run_cli("--version").stdout.strip() == f"sort_faces.py {__version__}"
