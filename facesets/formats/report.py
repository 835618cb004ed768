"""``index.html`` beside the manifest of every output folder, and its thumbnail sheets.

  OUT/index.html            one card per person / faceset: a contact sheet of face crops,
                            counts (kept, dropped by reason), the name from NAME.txt, links to
                            the folder and bundles, export-swap's top-N with rank and score,
                            and the person_NNN <-> faceset_NNN mapping
  OUT/_thumbs/<digest>.jpg  contact sheets: up to SHEET_TILES tiles of TILE px, COLUMNS a row

A sheet's name is a digest of what its tiles show (face key, crop, PNG size...), so it is
written once and shared by every later report that shows the same faces (a re-ranked faceset
gets a new sheet, an undo finds its old one again); sheets no report names any more are
removed (only names of this pattern, only in ``_thumbs/``). The page opens from disk: every
link is relative, no external asset, no script; images load lazily (one sheet per card, cut
into tiles with ``object-position``).

The same ``library_model`` (cards as plain dicts) feeds the review server (facesets/review/).
Every manifest is read through its validating loader; a name read from a manifest becomes a
path only through ``safe_member_path`` (PNG crops) or as a plain file name (placed photos).
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..io.fsutil import atomic_write_bytes, internal_dir, read_json, remove_temp_files
from ..io.imageio import ImageError, decode, read_header, scale_for
from .manifest import (CLUSTER_MANIFEST, CLUSTER_MANIFEST_FILE, REFINE_MANIFEST,
                       REFINE_MANIFEST_FILE, SWAP_FACESET_MANIFEST, SWAP_MANIFEST, ManifestError,
                       load_manifest, safe_member_path)
from .runs import clear_report_pending
from .swapset import (FACES_DIR, MANIFEST_NAME, NAME_FILE, dropped_counts, faceset_label,
                      faceset_origin)

REPORT_FILE = "index.html"
THUMBS_DIR = "_thumbs"
SHEET_FILE = re.compile(r"[0-9a-f]{16}\.jpg")
TILE = 96                 # px, square
COLUMNS = 10
SHEET_TILES = 100         # tiles per sheet (10 x 10)
REPORT_VERSION = 1        # part of every sheet's digest: a new drawing gets new names
CLUSTER_TILES = 20        # faces shown per raw person (a cluster can hold thousands)
SINGLETON_TILES = 60
PAD = 1.6                 # a photo crop: the face box side times this, square
OUTLINE = (0, 215, 255)   # BGR: amber box around the face a group-photo crop is about
NAME_MAX = 200
DROPPED_TILES = 30        # dropped faces shown per faceset (the strip under its card)
NOFACE_TILES = 40         # photos without a face shown on a page (a library has thousands)
NOFACE_DIR = "_noface"    # cluster's folder of them (steps/cluster.py places them there)
# the top manifest's sections of facesets moved out (merged: one per faceset merged in; the
# others one per record) and the word the overview's facts count them by
MOVED_OUT_FACTS = (("merged", "merged"), ("quarantined", "quarantined"),
                   ("masked", "masked"), ("thin_eras", "thin"))


@dataclass
class Tile:
    """One face of a card: what it shows and what identifies it (``ident``)."""
    key: str
    label: str = ""
    png: Path | None = None                 # a swap crop (the whole PNG)
    photo: Path | None = None               # a source photo (cluster / refine)
    bbox: list[float] | None = None
    others: list[list[float]] = field(default_factory=list)   # other faces of that photo
    file: str = ""                          # faces/NNN.png within the faceset (swap)
    score: float | None = None
    rank: int | None = None
    distance: float | None = None           # from the faceset's centroid (swap)
    sha256: str = ""                        # a photo tile: the photo's bytes must hash so
    link: str = ""                          # a dropped face: the photo it came from (href)
    whole: bool = False                     # a photo without a face: all of it, letterboxed
    sheet: str = ""                         # set by place_tiles: its sheet and offset
    x: int = 0
    y: int = 0

    def ident(self) -> list:
        if self.png is not None:
            try:
                size = self.png.stat().st_size
            except OSError:
                size = -1
            return [self.key, size]
        if self.whole:
            return [self.key, "whole"]
        return [self.key, self.bbox, self.others]


# ---- reading an output folder -------------------------------------------------------------
def report_kind(out: Path) -> tuple[str, Path]:
    """(manifest kind, manifest path) of an output folder; ManifestError when it has none."""
    out = Path(out)
    if (out / REFINE_MANIFEST_FILE).is_file():
        return REFINE_MANIFEST, out / REFINE_MANIFEST_FILE
    path = out / CLUSTER_MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{out}: no face-sets manifest ({CLUSTER_MANIFEST_FILE} or "
                            f"{REFINE_MANIFEST_FILE}); give an output folder of cluster, "
                            "refine or export-swap")
    try:
        head = read_json(path)
    except ValueError as exc:      # it names the file: not JSON, not UTF-8, nested too deep
        raise ManifestError(str(exc)) from None
    except OSError as exc:
        raise ManifestError(f"{path}: not readable ({exc})") from None
    kind = head.get("format") if isinstance(head, dict) else None
    if kind not in (CLUSTER_MANIFEST, SWAP_MANIFEST):
        raise ManifestError(f"{path}: format {kind!r} is not a cluster or export-swap manifest")
    return kind, path


def read_name(fdir: Path) -> str:
    """The first line of NAME.txt that is not a comment ("" when none)."""
    try:
        text = (fdir / NAME_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line[:NAME_MAX]
    return ""


def _plain_name(name) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name \
        and "\\" not in name and "\x00" not in name


def _photo_tiles(faces: list[dict], folder: Path, by_sha: dict[str, list[list[float]]],
                 limit: int) -> list[Tile]:
    tiles = []
    for f in faces[:limit]:
        placed = next((n for n in f.get("files", []) if _plain_name(n)), None)
        bbox = [float(v) for v in f.get("bbox", [])][:4]
        others = [b for b in by_sha.get(f.get("sha256", ""), []) if b != bbox]
        tiles.append(Tile(key=str(f.get("key", "")), photo=folder / placed if placed else None,
                          bbox=bbox if len(bbox) == 4 else None, others=others,
                          label=f"det {float(f.get('det_score', 0)):.2f}"))
    return tiles


def _boxes_by_photo(groups: list[list[dict]]) -> dict[str, list[list[float]]]:
    out: dict[str, list[list[float]]] = {}
    for faces in groups:
        for f in faces:
            if isinstance(f.get("bbox"), list) and len(f["bbox"]) == 4:
                out.setdefault(str(f.get("sha256", "")), []).append([float(v) for v in f["bbox"]])
    return out


def _keys_to(manifest: dict | None, section: str) -> dict[str, str]:
    out = {}
    for g in (manifest or {}).get(section, []):
        for f in g.get("faces", []):
            out[str(f.get("key"))] = g["name"]
    return out


def _try_load(path: Path, kind: str) -> dict | None:
    """A neighbouring manifest for the mapping (None when absent or unreadable: the mapping
    is left out, the report is still written)."""
    try:
        return load_manifest(path, kind) if path.is_file() else None
    except (ManifestError, ValueError, OSError):
        return None


def _mapping(keys: list[str], to: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for k in keys:
        if k in to:
            counts[to[k]] = counts.get(to[k], 0) + 1
    return ", ".join(f"{n} ({c})" for n, c in sorted(counts.items(), key=lambda x: (-x[1], x[0])))


def _card(name: str, tiles: list[Tile], **kw) -> dict:
    return dict({"name": name, "title": "", "kept": len(tiles), "dropped": {}, "links": [],
                 "mapping": "", "tiles": tiles, "shown": len(tiles)}, **kw)


def _cluster_cards(out: Path, m: dict) -> tuple[list[dict], dict]:
    persons = m.get("persons", [])
    by_sha = _boxes_by_photo([p["faces"] for p in persons] + [m.get("singletons", [])])
    refine = _try_load(out.parent / "facesets" / REFINE_MANIFEST_FILE, REFINE_MANIFEST)
    to_set = _keys_to(refine, "facesets")
    cards = []
    for p in persons:
        faces = sorted(p["faces"], key=lambda f: -float(f.get("det_score", 0)))
        cards.append(_card(p["name"], _photo_tiles(faces, out / p["name"], by_sha, CLUSTER_TILES),
                           kept=len(p["faces"]), images=p.get("image_count"),
                           links=[("folder", f"{p['name']}/")],
                           mapping=("refine: " + _mapping([f["key"] for f in p["faces"]], to_set))
                           if refine else ""))
    single = m.get("singletons", [])
    if single:
        cards.append(_card("_singletons", _photo_tiles(single, out / "_singletons", by_sha,
                                                       SINGLETON_TILES),
                           kept=len(single), links=[("folder", "_singletons/")]))
    s = m.get("summary", {})
    noface = [e for e in m.get("noface", []) if isinstance(e, dict)]
    head = {"title": "cluster", "noface": _cluster_noface(out, noface),
            "facts": [f"{s.get('persons', len(persons))} persons",
                                          f"{s.get('singletons', len(single))} singletons",
                                          f"{s.get('noface', 0)} photos without a face",
                                          f"{s.get('errors', 0)} unreadable"]}
    return cards, head


def display_name(name: str, title: str) -> str:
    """How a page names a faceset or person: ``faceset_017 (Anna)``, or the bare name when
    NAME.txt and the manifest give no label."""
    return f"{name} ({title})" if title else name


def _noface_tile(photo: Path, sha256: str, link: str, name: str = "") -> Tile:
    """A photo without a face: all of it, captioned with its file name (``name``: the
    original's, where ``photo`` is a placed copy)."""
    return Tile(key=f"noface:{sha256}", photo=photo, sha256=sha256, link=link, whole=True,
                label=(name or photo.name)[:NAME_MAX])


def _cluster_noface(out: Path, entries: list[dict]) -> dict:
    """The raw overview's strip of photos without a face: the copies cluster placed in
    _noface/ (a plain file name each, checked by the manifest's loader), linked."""
    tiles = []
    for e in entries[:NOFACE_TILES]:
        placed = next((n for n in e.get("files", []) if _plain_name(n)), None)
        if placed and isinstance(e.get("sha256"), str):
            original = e.get("path") if isinstance(e.get("path"), str) else ""
            tiles.append(_noface_tile(out / NOFACE_DIR / placed, e["sha256"],
                                      f"{NOFACE_DIR}/{placed}",
                                      original.replace("\\", "/").rsplit("/", 1)[-1]))
    return {"tiles": tiles, "total": len(entries), "note": "",
            "links": [("folder", f"{NOFACE_DIR}/")] if entries else []}


def _swap_noface(out: Path, top: dict) -> dict:
    """The swap-ready library's strip of photos without a face, from the cache its top
    manifest names (the files it recorded as "noface"); a cache that is gone or unreadable
    is one line on the page instead. A photo is linked relative to the page and shown only
    while its bytes are still the ones the cache hashed (render_tile)."""
    from .cache import STATUS_NOFACE, CacheError, cache_exists, load_cache
    path = top.get("cache")
    if not isinstance(path, str) or not path or "\x00" in path or not os.path.isabs(path):
        return {"tiles": [], "total": 0, "note": "", "links": []}
    if not cache_exists(path):
        return {"tiles": [], "total": 0, "links": [],
                "note": f"photos without a face: not shown, the cache {path} is gone"}
    try:
        files = load_cache(path).files
    except (CacheError, OSError, ValueError) as exc:
        return {"tiles": [], "total": 0, "links": [],
                "note": f"photos without a face: not shown, {' '.join(str(exc).split())[:300]}"}
    rows = sorted((str(p), str(h)) for p, h, st in zip(files["path"].tolist(),
                                                       files["sha256"].tolist(),
                                                       files["status"].tolist())
                  if st == STATUS_NOFACE and p and os.path.isabs(p) and "\x00" not in p)
    tiles = [_noface_tile(Path(p), h, os.path.relpath(p, out)) for p, h in rows[:NOFACE_TILES]]
    return {"tiles": tiles, "total": len(rows), "note": "", "links": []}


def _refine_cards(out: Path, m: dict) -> tuple[list[dict], dict]:
    sets = m.get("facesets", [])
    by_sha = _boxes_by_photo([fs["faces"] for fs in sets])
    raw = _try_load(out.parent / "raw" / CLUSTER_MANIFEST_FILE, CLUSTER_MANIFEST)
    to_person = _keys_to(raw, "persons")
    cards = []
    for fs in sets:
        faces = sorted(fs["faces"], key=lambda f: -float(f.get("det_score", 0)))
        cards.append(_card(fs["name"], _photo_tiles(faces, out / fs["name"], by_sha,
                                                    SHEET_TILES),
                           kept=len(fs["faces"]), images=fs.get("image_count"),
                           links=[("folder", f"{fs['name']}/")],
                           mapping=("raw: " + _mapping([f["key"] for f in fs["faces"]], to_person))
                           if raw else "",
                           # what refine's gates took out of this identity
                           dropped=dropped_counts(fs.get("dropped", [])),
                           dropped_tiles=_dropped_tiles(out, out / fs["name"], out,
                                                        fs.get("dropped", []))))
    s = m.get("summary", {})
    dropped = s.get("dropped") if isinstance(s.get("dropped"), dict) else {}
    head = {"title": "refine", "facts": [f"{len(sets)} facesets",
                                         f"{s.get('faces_kept', '?')} of {s.get('faces_in', '?')}"
                                         " faces kept"]
            + [f"dropped {k}: {v}" for k, v in sorted(dropped.items())]}
    return cards, head


def swap_faceset_card(out: Path, name: str, raw_of: dict[str, str] | None = None,
                      limit: int | None = None) -> dict:
    """The card of one swap-ready faceset (every kept face, in rank order)."""
    fdir = out / name
    path = fdir / MANIFEST_NAME
    fm = load_manifest(path, SWAP_FACESET_MANIFEST)
    faces = sorted(fm["faces"], key=lambda f: f["rank"])
    tiles = []
    # the loader checked every file is faces/NNN.png: only faces/ itself could lead out
    faces_dir = safe_member_path(fdir, FACES_DIR, "faces[].file", path) if faces else fdir
    for f in faces[:limit]:
        score = f.get("score")
        score = float(score) if isinstance(score, (int, float)) else None
        tiles.append(Tile(key=f["key"], png=faces_dir / f["file"].split("/", 1)[1],
                          file=f["file"], score=score, rank=int(f["rank"]),
                          distance=float(f["distance"]) if isinstance(f.get("distance"),
                                                                      (int, float)) else None,
                          label=f"#{int(f['rank']) + 1}"
                          + (f" {score:.2f}" if score is not None else "")))
    b = fm.get("bundles") if isinstance(fm.get("bundles"), dict) else {}
    links = [("folder", f"{name}/")]
    for k in ("top", "all"):
        if isinstance(b.get(k), str) and _plain_name(b[k]):
            links.append((b[k], f"{name}/{b[k]}"))
    mapping = faceset_origin(fm)
    if raw_of:
        persons = _mapping([f["key"] for f in fm["faces"]] + [str(d.get("key"))
                                                             for d in fm["dropped"]], raw_of)
        if persons:
            mapping += f" · raw {persons}"
    # NAME.txt (the operator's) first, else the label it was imported under
    return _card(name, tiles, title=read_name(fdir) or faceset_label(fm), kept=len(fm["faces"]),
                 dropped=dropped_counts(fm["dropped"]), links=links, mapping=mapping,
                 dropped_tiles=_dropped_tiles(out, fdir, path, fm["dropped"]),
                 top_n=int(fm["top_n"]),
                 gate=(fm.get("parameters") or {}).get("outlier_threshold"),
                 cohesion=fm.get("cohesion"),
                 history=[h for h in fm.get("history", []) if isinstance(h, dict)])


def _dropped_label(d: dict) -> str:
    """A dropped face's caption: its gate, and its value against the gate's limit."""
    value, limit = d.get("value"), d.get("limit")
    label = str(d.get("reason", "?"))
    if isinstance(value, (int, float)) and isinstance(limit, (int, float)):
        label += f" {value:g}{'>' if value > limit else '<'}{limit:g}"
    return label


def _dropped_tiles(out: Path, fdir: Path, path: Path, dropped: list[dict]) -> list[Tile]:
    """The strip of a faceset's dropped faces: the parked PNG when a step moved it to
    faces/_dropped/, else the face cut from its source photo; captioned with the gate and
    linked to the photo (a link relative to the page, like every other)."""
    tiles = []
    for d in dropped[:DROPPED_TILES]:
        photo = d.get("path") if isinstance(d.get("path"), str) else ""
        link = os.path.relpath(photo, out) if photo and os.path.isabs(photo) \
            and "\x00" not in photo else ""
        bbox = [float(v) for v in d.get("bbox", []) if isinstance(v, (int, float))][:4]
        t = Tile(key=str(d.get("key", "")), label=_dropped_label(d), link=link)
        if isinstance(d.get("moved_to"), str):
            t.png = safe_member_path(fdir, d["moved_to"], "dropped[].moved_to", path)
        elif photo and os.path.isabs(photo) and len(bbox) == 4 \
                and isinstance(d.get("sha256"), str) and d["sha256"]:
            t.photo, t.bbox, t.sha256 = Path(photo), bbox, d["sha256"]
        tiles.append(t)
    return tiles


def _swap_raw_of(top: dict) -> dict[str, str] | None:
    ref = top.get("refine_manifest")
    if not isinstance(ref, str) or not ref:
        return None
    raw = _try_load(Path(ref).parent.parent / "raw" / CLUSTER_MANIFEST_FILE, CLUSTER_MANIFEST)
    return _keys_to(raw, "persons") if raw else None


def _swap_cards(out: Path, top: dict) -> tuple[list[dict], dict]:
    raw_of = _swap_raw_of(top)
    cards = [swap_faceset_card(out, e["name"], raw_of) for e in top.get("facesets", [])]
    for c in cards:    # the static page shows the top-N with scores
        c["shown"] = min(len(c["tiles"]), c["top_n"])
    s = top.get("summary", {})
    dropped = s.get("dropped") if isinstance(s.get("dropped"), dict) else {}
    facts = [f"{len(cards)} facesets", f"{sum(c['kept'] for c in cards)} faces kept"]
    facts += [f"dropped {k}: {v}" for k, v in sorted(dropped.items())]
    mixed = mixed_suggestions(cards)
    if mixed:
        facts.append(f"{len(mixed)} may hold two people")
    # facesets moved out of the set (no card of their own): counted, so none goes unseen
    for sec, word in MOVED_OUT_FACTS:
        if top.get(sec):
            facts.append(f"{word}: {sum(len(r.get('merged', [])) or 1 for r in top[sec])}")
    return cards, {"title": "swap-ready facesets", "facts": facts,
                   "noface": _swap_noface(out, top)}


def mixed_suggestions(cards: list[dict]) -> list[dict]:
    """The facesets whose ``cohesion`` says they likely hold two people, most likely first
    (split distance over the threshold it was compared with), each with its figure and a
    plain sentence (the review page's suggestions; docs/clustering.md)."""
    out = []
    for c in cards:
        coh = c.get("cohesion") or {}
        if is_flagged(coh):
            out.append({"faceset": c["name"], "split": coh["split"],
                        "threshold": coh["threshold"],
                        "ratio": round(coh["split"] / coh["threshold"], 3),
                        "sentence": mixed_sentence(coh)})
    return sorted(out, key=lambda m: (-m["ratio"], m["faceset"]))


def is_flagged(coh: dict | None) -> bool:
    """Whether a (validated) ``cohesion`` says likely mixed, with a threshold to show."""
    return isinstance(coh, dict) and coh.get("likely_mixed") is True \
        and bool(coh.get("threshold"))


def mixed_sentence(coh: dict) -> str:
    """What a flagged faceset's card says."""
    return (f"may hold two people: its faces fall into two groups {coh['split']:.2f} apart "
            f"(the cluster threshold is {coh['threshold']:.2f}); look, and split it if so")


def library_model(out: str | os.PathLike) -> tuple[str, list[dict], dict]:
    """(kind, cards, head) of an output folder, read from its manifests."""
    out = Path(out)
    kind, path = report_kind(out)
    m = load_manifest(path, kind)
    if kind == CLUSTER_MANIFEST:
        cards, head = _cluster_cards(out, m)
    elif kind == REFINE_MANIFEST:
        cards, head = _refine_cards(out, m)
    else:
        cards, head = _swap_cards(out, m)
    return kind, cards, head


# ---- thumbnail sheets ---------------------------------------------------------------------
def _intersects(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _blank(text: bool = True) -> np.ndarray:
    import cv2  # here, not at module import: `--help` loads no OpenCV
    img = np.full((TILE, TILE, 3), 48, np.uint8)
    if text:
        cv2.line(img, (20, 20), (TILE - 20, TILE - 20), (90, 90, 90), 2)
        cv2.line(img, (TILE - 20, 20), (20, TILE - 20), (90, 90, 90), 2)
    return img


def _square(img: np.ndarray) -> np.ndarray:
    import cv2
    return cv2.resize(img, (TILE, TILE), interpolation=cv2.INTER_AREA)


def _letterbox(img: np.ndarray) -> np.ndarray:
    """All of a photo in a tile: its longer side TILE px, centred on the tile's ground."""
    import cv2
    h, w = img.shape[:2]
    k = TILE / max(h, w, 1)
    nw, nh = max(1, round(w * k)), max(1, round(h * k))
    tile = _blank(text=False)
    x, y = (TILE - nw) // 2, (TILE - nh) // 2
    tile[y:y + nh, x:x + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return tile


def render_tile(t: Tile) -> np.ndarray:
    """A tile's pixels: the PNG scaled down, or the face's square crop of its photo (the face
    outlined when another face of the photo shows in the crop). Unreadable: a crossed tile."""
    import cv2
    try:
        if t.png is not None:
            img = cv2.imdecode(np.fromfile(str(t.png), np.uint8), cv2.IMREAD_COLOR)
            return _blank() if img is None else _square(img)
        if t.photo is None or (t.bbox is None and not t.whole):
            return _blank()
        data = t.photo.read_bytes()
        # a photo named by a manifest outside the output folder (a dropped face's source)
        # is shown only when it is the very photo the cache embedded
        if t.sha256 and hashlib.sha256(data).hexdigest() != t.sha256:
            return _blank()
        hdr = read_header(data)
        if t.whole:
            return _letterbox(decode(data, scale_for(max(hdr.width, hdr.height), TILE)))
        x1, y1, x2, y2 = t.bbox
        side = max(x2 - x1, y2 - y1) * PAD
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        box = [max(0.0, cx - side / 2), max(0.0, cy - side / 2),
               min(float(hdr.width), cx + side / 2), min(float(hdr.height), cy + side / 2)]
        img = decode(data, scale_for(int(side), TILE))   # the crop keeps >= TILE px
        sx = img.shape[1] / hdr.width
        crop = img[int(box[1] * sx):max(int(box[1] * sx) + 1, int(box[3] * sx)),
                   int(box[0] * sx):max(int(box[0] * sx) + 1, int(box[2] * sx))]
        if crop.size == 0:
            return _blank()
        tile = _square(crop)
        if any(_intersects(o, box) for o in t.others):
            k = TILE / max(1.0, (box[2] - box[0]))
            ky = TILE / max(1.0, (box[3] - box[1]))
            p1 = (int((x1 - box[0]) * k), int((y1 - box[1]) * ky))
            p2 = (int((x2 - box[0]) * k), int((y2 - box[1]) * ky))
            cv2.rectangle(tile, p1, p2, OUTLINE, 2)
        return tile
    except (OSError, ImageError, ValueError, cv2.error):
        return _blank()


def sheet_name(tiles: list[Tile]) -> str:
    content = json.dumps([REPORT_VERSION, TILE, COLUMNS, [t.ident() for t in tiles]])
    return hashlib.sha256(content.encode()).hexdigest()[:16] + ".jpg"


def write_sheet(dest: Path, tiles: list[Tile]) -> None:
    import cv2
    rows = max(1, -(-len(tiles) // COLUMNS))
    sheet = np.full((rows * TILE, min(COLUMNS, max(1, len(tiles))) * TILE, 3), 24, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, COLUMNS)
        sheet[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = render_tile(t)
    ok, buf = cv2.imencode(".jpg", sheet, [cv2.IMWRITE_JPEG_QUALITY, 82])
    if not ok:
        raise OSError(f"{dest}: could not encode the thumbnail sheet")
    atomic_write_bytes(dest, buf.tobytes(), root=dest.parent.parent)   # OUT/_thumbs/x.jpg


def place_tiles(out: Path, cards: list[dict], progress: bool = False,
                head: dict | None = None) -> set[str]:
    """Give every tile its sheet and position (``sheet``, ``x``, ``y``), writing the sheets
    that do not exist yet (``head``: the page's own strip of photos without a face too);
    returns the sheet names in use."""
    thumbs = internal_dir(out, THUMBS_DIR, create=False)   # never a symlink out of OUT
    todo, used = [], set()
    groups = [(card, card["tiles"]) for card in cards]
    groups += [(card, card["dropped_tiles"]) for card in cards if card.get("dropped_tiles")]
    noface = (head or {}).get("noface")
    if noface and noface["tiles"]:
        groups.append((noface, noface["tiles"]))
    for card in cards + ([noface] if noface else []):
        card["sheets"] = []
    for card, tiles in groups:
        for s in range(0, len(tiles), SHEET_TILES):
            chunk = tiles[s:s + SHEET_TILES]
            name = sheet_name(chunk)
            used.add(name)
            card["sheets"].append(name)
            for k, t in enumerate(chunk):
                r, c = divmod(k, COLUMNS)
                t.sheet, t.x, t.y = name, c * TILE, r * TILE
            if not (thumbs / name).is_file():
                todo.append((name, chunk))
    if todo:
        from ..runtime.progress import progress_bar
        seen = set()
        for name, chunk in progress_bar(todo, desc="report thumbnails", unit="sheet",
                                        disable=not progress):
            if name not in seen:
                write_sheet(thumbs / name, chunk)
                seen.add(name)
    return used


def prune_sheets(out: Path, used: set[str]) -> None:
    thumbs = out / THUMBS_DIR
    if thumbs.is_dir() and not thumbs.is_symlink():
        for p in thumbs.iterdir():
            if SHEET_FILE.fullmatch(p.name) and p.name not in used and p.is_file():
                p.unlink()
        if not any(thumbs.iterdir()):   # a library of no faceset: no empty folder left
            thumbs.rmdir()


# ---- the page -----------------------------------------------------------------------------
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#16181c;color:#ddd}
header{padding:12px 20px;background:#0e0f12;position:sticky;top:0;z-index:1}
header h1{font-size:18px;margin:0 0 4px}
header .facts span{margin-right:14px;color:#aaa}
main{padding:12px 20px}
.card{background:#202329;border-radius:8px;margin:0 0 14px;padding:10px 12px;
 content-visibility:auto;contain-intrinsic-size:auto 300px}
.card h2{font-size:16px;margin:0}
.card h2 .nm{color:#f0c060;margin-left:8px}
.card p{margin:3px 0;color:#aaa}
.card a{color:#8cb8ff;margin-right:10px}
.tiles{display:flex;flex-wrap:wrap;gap:4px;margin-top:6px}
figure{margin:0;width:96px}
figure img{width:96px;height:96px;object-fit:none;display:block;background:#333;
 border-radius:3px}
figure a{display:block}
figcaption{font-size:11px;color:#999;text-align:center;overflow:hidden;
 text-overflow:ellipsis;white-space:nowrap}
.more{align-self:center;color:#888;padding:0 8px}
.strip{opacity:.8}
.strip figure img{outline:1px solid #a55}
.card p.mix{color:#ff9040}
"""


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _href(rel: str) -> str:
    return quote(rel, safe="/")


def _figure(t: Tile, link: str = "") -> str:
    """One tile: its part of its sheet and its caption (wrapped in ``link`` when given)."""
    src = _e(_href(f"{THUMBS_DIR}/{t.sheet}"))
    img = (f"<img loading=\"lazy\" src=\"{src}\" width=\"96\" height=\"96\" "
           f"style=\"object-position:-{t.x}px -{t.y}px\" alt=\"{_e(t.label)}\">")
    if link:
        img = f"<a href=\"{_e(_href(link))}\">{img}</a>"
    return f"<figure>{img}<figcaption>{_e(t.label)}</figcaption></figure>"


def render_html(kind: str, cards: list[dict], head: dict, folder_name: str = "") -> str:
    """The page (``folder_name`` is not shown: equal folders under other names get equal
    bytes)."""
    parts = ["<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">",
             f"<title>face-sets: {_e(head['title'])}</title>",
             f"<style>{CSS}</style></head><body>",
             f"<header><h1>{_e(head['title'])}</h1><div class=\"facts\">",
             "".join(f"<span>{_e(f)}</span>" for f in head["facts"]),
             "</div></header><main>"]
    for c in cards:
        parts.append(f"<section class=\"card\" id=\"{_e(c['name'])}\"><h2>{_e(c['name'])}")
        if c["title"]:
            parts.append(f" <span class=\"nm\">({_e(c['title'])})</span>")
        parts.append("</h2>")
        counts = f"{c['kept']} faces"
        if c.get("images"):
            counts += f" in {c['images']} photos"
        if c["dropped"]:
            counts += " · dropped " + ", ".join(f"{_e(k)} {v}"
                                                for k, v in sorted(c["dropped"].items()))
        parts.append(f"<p class=\"counts\">{counts}</p>")
        if is_flagged(c.get("cohesion")):
            parts.append(f"<p class=\"mix\">{_e(mixed_sentence(c['cohesion']))}</p>")
        if c["mapping"] and not c["mapping"].endswith(": "):
            parts.append(f"<p class=\"map\">{_e(c['mapping'])}</p>")
        parts.append("<p class=\"links\">" + "".join(
            f"<a href=\"{_e(_href(h))}\">{_e(t)}</a>" for t, h in c["links"]) + "</p>")
        parts.append("<div class=\"tiles\">")
        for t in c["tiles"][:c["shown"]]:
            parts.append(_figure(t))
        if c["kept"] > c["shown"]:
            parts.append(f"<span class=\"more\">+{c['kept'] - c['shown']} more</span>")
        parts.append("</div>")
        strip = c.get("dropped_tiles") or []
        if strip:
            total = sum(c["dropped"].values())
            parts.append(f"<p class=\"dropped\">dropped ({total}): the gate, the face's "
                         "value against its limit; a click opens the photo</p>"
                         "<div class=\"tiles strip\">")
            for t in strip:
                parts.append(_figure(t, t.link))
            if total > len(strip):
                parts.append(f"<span class=\"more\">+{total - len(strip)} more</span>")
            parts.append("</div>")
        parts.append("</section>")
    parts.append(_noface_html(head.get("noface")))
    parts.append("</main></body></html>\n")
    return "".join(parts)


def noface_model(noface: dict | None) -> dict | None:
    """The strip of photos without a face as plain JSON (the review server's page data): a
    tile names its photo by the sha256 the cache recorded (the server's /noface/<sha256>
    serves it), never by a path."""
    if not noface:
        return None
    return {"total": noface["total"], "note": noface["note"],
            "tiles": [{"sheet": t.sheet, "x": t.x, "y": t.y, "label": t.label,
                       "sha256": t.sha256} for t in noface["tiles"]]}


def _noface_html(noface: dict | None) -> str:
    """The page's strip of photos without a face (each linking the photo), "and N more" past
    the cap; or the one line saying why it cannot be shown."""
    if not noface or not (noface["total"] or noface["note"]):
        return ""
    if noface["note"]:
        return (f"<section class=\"card noface\" id=\"_noface\"><p>{_e(noface['note'])}</p>"
                "</section>")
    parts = [f"<section class=\"card noface\" id=\"_noface\"><h2>photos without a face "
             f"({noface['total']})</h2>",
             "<p class=\"links\">" + "".join(f"<a href=\"{_e(_href(h))}\">{_e(t)}</a>"
                                            for t, h in noface["links"]) + "</p>",
             "<div class=\"tiles\">"]
    parts += [_figure(t, t.link) for t in noface["tiles"]]
    if noface["total"] > len(noface["tiles"]):
        parts.append(f"<span class=\"more\">and {noface['total'] - len(noface['tiles'])} "
                     "more</span>")
    parts.append("</div></section>")
    return "".join(parts)


def write_report(out: str | os.PathLike, progress: bool = False,
                 model: list | None = None) -> Path:
    """Write (or rewrite) OUT/index.html and the thumbnail sheets it needs; returns its path.
    The page depends only on the manifests, NAME.txt files and face PNGs (no time, no run
    ids), so two equal folders get the same bytes. ``model``: a list to receive
    (kind, cards, head), tiles placed on their sheets (the review server reuses it)."""
    out = Path(out)
    # what a write killed half-way left behind (the page and its sheets are rewritten anyway)
    remove_temp_files(out, re.compile(re.escape(REPORT_FILE)))
    if not (out / THUMBS_DIR).is_symlink():
        remove_temp_files(out / THUMBS_DIR, SHEET_FILE)
    kind, cards, head = library_model(out)
    used = place_tiles(out, cards, progress, head)
    dest = out / REPORT_FILE
    atomic_write_bytes(dest, render_html(kind, cards, head, out.name).encode("utf-8"))
    prune_sheets(out, used)
    clear_report_pending(out)    # a run's report a kill left to rewrite: rewritten now
    if model is not None:
        model[:] = [kind, cards, head]
    return dest
