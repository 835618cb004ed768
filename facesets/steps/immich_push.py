"""``immich push``: write the facesets of a swap-ready folder back to Immich as people.

For each faceset (``OUT/swap_ready/faceset_NNN``): the person's name is the first line of
its NAME.txt (``faceset_NNN`` while that is empty); each kept face is traced to the Immich
assets with the same bytes (sha256, from the stage state: staged, alias and known assets),
and to the Immich face of that asset whose box overlaps it best (IoU of the boxes in the
image's own proportions, at least ``MIN_IOU``). Then a person of that name is reused (or
created) and those faces are reassigned to it (``PUT /api/faces/{id}``). ``plan_push``
changes nothing (``--dry-run`` prints it); ``apply_push`` carries it out. Pushing twice
assigns nothing the second time. The server's major version is checked first: unknown
majors are refused rather than guessed at.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.runs import load_top
from ..formats.cache import load_cache
from ..formats.immich_state import load_state
from ..formats.manifest import SWAP_FACESET_MANIFEST, load_manifest, safe_member_path
from ..formats.swapset import MANIFEST_NAME, NAME_FILE
from ..sources.immich import ImmichClient, face_box

MIN_IOU = 0.3


@dataclass
class PersonPlan:
    faceset: str
    name: str
    person_id: str | None                      # an existing person of that name
    assign: list[str] = field(default_factory=list)    # Immich face ids to reassign
    already: int = 0                           # faces that are that person's already
    not_in_immich: int = 0                     # faces of photos Immich does not hold
    unmatched: int = 0                         # Immich holds the photo, no face box fits

    def line(self) -> str:
        who = f"person {self.name!r} ({'existing' if self.person_id else 'new'})"
        return (f"{self.faceset} -> {who}: {len(self.assign)} faces to assign, "
                f"{self.already} already there, {self.unmatched} without a matching Immich "
                f"face, {self.not_in_immich} from photos not in Immich")


def _iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def best_face(bbox, size: tuple[int, int], faces: list[dict]) -> dict | None:
    """The Immich face whose box (in its preview) best overlaps ``bbox`` (in the original of
    ``size``), compared in proportions of each image; None below MIN_IOU."""
    w, h = size
    ours = (bbox[0] / w, bbox[1] / h, bbox[2] / w, bbox[3] / h)
    best, score = None, MIN_IOU
    for f in faces:
        box = face_box(f)
        if box is None:
            continue
        x1, y1, x2, y2, iw, ih = box
        theirs = (x1 / iw, y1 / ih, x2 / iw, y2 / ih)
        s = _iou(ours, theirs)
        if s >= score and isinstance(f.get("id"), str):
            best, score = f, s
    return best


def _name(folder: Path) -> str:
    try:
        for line in (folder / NAME_FILE).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                return line[:100]
    except (OSError, UnicodeDecodeError):
        pass
    return folder.name


def plan_push(client: ImmichClient, swap_ready: str | Path, root: str | Path,
              cache_path: str) -> list[PersonPlan]:
    swap_ready = Path(swap_ready)
    client.check_version()
    _, latest = load_state(root)
    assets_of: dict[str, list[str]] = {}
    for r in latest.values():
        if r.get("sha256"):
            assets_of.setdefault(r["sha256"], []).append(r["asset"])
    cache = load_cache(cache_path)
    size = {s: (int(w), int(h)) for s, w, h in zip(cache.files["sha256"].tolist(),
                                                   cache.files["width"].tolist(),
                                                   cache.files["height"].tolist())}
    people = {p.get("name"): p["id"] for p in client.people() if p.get("name")}
    faces_of: dict[str, list[dict]] = {}
    plans = []
    for entry in load_top(swap_ready).get("facesets", []):
        folder = safe_member_path(swap_ready, entry.get("name"), "facesets[].name",
                                  swap_ready / MANIFEST_NAME)
        m = load_manifest(folder / MANIFEST_NAME, SWAP_FACESET_MANIFEST)
        name = _name(folder)
        plan = PersonPlan(folder.name, name, people.get(name))
        for face in m.get("faces", []):
            assets = assets_of.get(face.get("sha256"), [])
            dims = size.get(face.get("sha256"))
            if not assets or not dims or min(dims) <= 0:
                plan.not_in_immich += 1
                continue
            for aid in assets:
                if aid not in faces_of:
                    faces_of[aid] = client.faces(aid)
                hit = best_face(face["bbox"], dims, faces_of[aid])
                if hit is None:
                    plan.unmatched += 1
                elif plan.person_id and (hit.get("person") or {}).get("id") == plan.person_id:
                    plan.already += 1
                elif hit["id"] not in plan.assign:
                    plan.assign.append(hit["id"])
        plans.append(plan)
    return plans


def apply_push(client: ImmichClient, plans: list[PersonPlan], log=print) -> dict:
    """Create the missing people and reassign the planned faces; counts of what was done."""
    done = {"people_created": 0, "faces_assigned": 0}
    for plan in plans:
        if not plan.assign:
            continue
        if plan.person_id is None:
            plan.person_id = client.create_person(plan.name)
            done["people_created"] += 1
        for face_id in plan.assign:
            client.assign_face(face_id, plan.person_id)
            done["faces_assigned"] += 1
        log(f"immich push: {plan.faceset} -> {plan.name!r}: {len(plan.assign)} faces assigned")
    return done
