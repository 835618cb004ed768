// face-sets review page: plain JS, no build step. Data and thumbnails need the token of the
// URL; every action is a POST to the server, which calls the library (the page writes
// nothing itself).
"use strict";
const TOKEN = new URLSearchParams(location.search).get("token") || "";
const OVERVIEW_TILES = 12;
let lib = null, cur = 0, selected = new Set(), faceSel = new Set(), mixedOf = new Map();
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}

function tile(t, name) {
  const img = el("img", {loading: "lazy", width: 96, height: 96, alt: t.label,
    src: `/thumbs/${t.sheet}?token=${encodeURIComponent(TOKEN)}`});
  img.style.objectPosition = `-${t.x}px -${t.y}px`;
  const f = el("figure", {class: "tile", ...(t.file ? {"data-file": t.file} : {})}, img,
               el("div", {class: "cap"}, t.label));
  return f;
}

// the library's photos without a face (from the cache it names): a strip of tiles, each
// linking its photo through the server (/noface/<sha256>), "and N more" past the cap; or the
// one line saying why they are not shown (the cache is gone or unreadable)
function renderNoface() {
  const nf = lib.head.noface, box = $("noface");
  box.hidden = !nf || !(nf.total || nf.note);
  if (box.hidden) { box.replaceChildren(); return; }
  if (nf.note) { box.replaceChildren(el("p", {}, nf.note)); return; }
  const tiles = nf.tiles.map((t) => {
    const f = tile(t, "");
    const a = el("a", {href: `/noface/${t.sha256}?token=${encodeURIComponent(TOKEN)}`,
                       target: "_blank", rel: "noopener"});
    a.append(f.querySelector("img"));
    f.prepend(a);
    return f;
  });
  if (nf.total > nf.tiles.length) tiles.push(el("span", {class: "more"}, `and ${nf.total - nf.tiles.length} more`));
  box.replaceChildren(el("h2", {}, `photos without a face (${nf.total})`),
                      el("div", {class: "tiles"}, ...tiles));
}

// a faceset as the pages name it: "faceset_017 (Anna)" where it has a label
function titleOf(name) { const c = lib && lib.cards.find((x) => x.name === name); return c ? c.title : ""; }
function nameOf(name) { const t = titleOf(name); return t ? `${name} (${t})` : name; }
function label(c) { return c.title ? el("span", {class: "nm"}, ` (${c.title})`) : ""; }

function status(msg, err) { const s = $("status"); s.textContent = msg; s.className = err ? "err" : ""; }

async function load() {
  const r = await fetch(`/api/library?token=${encodeURIComponent(TOKEN)}`);
  if (!r.ok) { status(`cannot load the library (${r.status})`, true); return; }
  lib = await r.json();
  mixedOf = new Map(lib.suggestions.mixed.map((m) => [m.faceset, m]));
  render();
}

// what an action did, in words, shown at once beside its undo button
function describe(action, b) {
  const n = (b.files || []).length, faces = `${n} face${n === 1 ? "" : "s"}`;
  switch (action) {
    case "rename": return `${nameOf(b.faceset)} renamed to "${b.name}"`;
    case "drop": return `${faces} dropped from ${nameOf(b.faceset)}`;
    case "move": return `${faces} moved from ${nameOf(b.faceset)} to ${nameOf(b.into)}`;
    case "merge": return `merged ${b.facesets.map(nameOf).join(" + ")}`;
    case "quarantine": return `${nameOf(b.faceset)} quarantined`;
    case "split": return n ? `${faces} split off ${nameOf(b.faceset)}` : `${nameOf(b.faceset)} split`;
    case "undo": return b.run ? `run ${b.run} undone` : "the last run undone";
    default: return action;
  }
}

async function act(action, body) {
  status(`${action}…`);
  const r = await fetch(`/api/${action}`, {method: "POST",
    headers: {"Content-Type": "application/json", "X-Review-Token": TOKEN},
    body: JSON.stringify(body)});
  const res = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
  if (!r.ok) { status(`${action} failed: ${res.error}`, true); return false; }
  faceSel.clear(); selected.clear();
  await load();
  // after the new state is shown: what was done, and its undo
  let what = describe(action, body);
  if (action === "undo") {           // name the run it reversed, from the new history
    const h = lib.history.find((x) => x.undone_by && x.undone_by === res.run);
    if (h) what = `run ${h.id} (${h.step}${h.facesets.length ? " of " + h.facesets.slice(0, 3).join(", ") : ""}) undone`;
  }
  status(`${action} done (run ${res.run || "-"}): ${what} `);
  if (res.run && action !== "undo")
    $("status").append(el("button", {id: "status-undo", onclick: () => act("undo", {run: res.run})}, "undo"));
  return true;
}

// a modal question before an action that is not undone with one key: Enter or y confirms,
// Esc or n cancels (the page's other keys are off while it is open)
function ask(title, kids, okLabel, onOk) {
  const d = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-body").replaceChildren(...kids);
  $("confirm-ok").textContent = okLabel;
  $("confirm-ok").onclick = () => { d.close(); onOk(); };
  $("confirm-cancel").onclick = () => d.close();
  d.showModal();
  $("confirm-ok").focus();
}

async function confirmMerge() {
  if (selected.size < 2) return;
  const names = [...selected];
  const q = names.map((n) => `faceset=${encodeURIComponent(n)}`).join("&");
  const r = await fetch(`/api/merge-preview?token=${encodeURIComponent(TOKEN)}&${q}`);
  const p = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
  if (!r.ok) { status(`merge failed: ${p.error}`, true); return; }
  const kids = p.members.map((name, i) => {
    const c = lib.cards.find((x) => x.name === name) || {title: "", tiles: [], kept: 0};
    return el("div", {class: "preview"},
      el("h3", {}, name, label(c),
         el("span", {}, ` · ${c.kept} faces` + (i === 0 ? " · keeps its name" : ""))),
      el("div", {class: "tiles"}, ...c.tiles.slice(0, 6).map((t) => tile(t, name))));
  });
  kids.push(el("p", {id: "merge-similarity"}, `similarity ${p.similarity} (distance ${p.distance}` +
    (p.split_threshold === null ? ")" : `, split threshold ${p.split_threshold})`)));
  if (p.likely_different)
    kids.push(el("p", {class: "mix", id: "merge-warning"},
      `likely different people: their distance ${p.distance} is above the split threshold ${p.split_threshold}`));
  ask(`Merge ${p.members.length} facesets?`, kids, "Merge", () => act("merge", {facesets: names}));
}

function toggleCard(name, on) {
  // a selection changes two classes and one button: no re-render of 300 cards
  on = on === undefined ? !selected.has(name) : on;
  on ? selected.add(name) : selected.delete(name);
  const card = document.getElementById("card-" + name);
  if (card) { card.classList.toggle("sel", on); card.querySelector("input").checked = on; }
  $("merge").disabled = selected.size < 2;
}

function renderOverview() {
  $("title").textContent = `${lib.folder}: ${lib.head.title}`;
  $("facts").replaceChildren(...lib.head.facts.map((f) => el("span", {}, f)));
  const q = $("search").value.trim().toLowerCase();
  const cards = [];
  lib.cards.forEach((c, i) => {
    if (q && !(c.name + " " + c.title).toLowerCase().includes(q)) return;
    const box = el("input", {type: "checkbox", "aria-label": "select " + c.name});
    box.checked = selected.has(c.name);
    box.onchange = () => toggleCard(c.name, box.checked);
    const tiles = c.tiles.slice(0, OVERVIEW_TILES).map((t) => tile(t, c.name));
    if (c.tiles.length > OVERVIEW_TILES) tiles.push(el("span", {class: "more"}, `+${c.tiles.length - OVERVIEW_TILES}`));
    const dropped = Object.entries(c.dropped).map(([k, v]) => `${k} ${v}`).join(", ");
    const mix = mixedOf.get(c.name);
    const card = el("section", {class: "card" + (i === cur ? " cur" : "") + (selected.has(c.name) ? " sel" : "") +
                                (mix ? " mixed" : ""), id: "card-" + c.name, "data-index": i},
      el("h2", {}, box, el("a", {href: "#/" + c.name}, c.name), label(c)),
      el("p", {}, `${c.kept} faces` + (dropped ? ` · dropped ${dropped}` : "") + (c.mapping ? ` · ${c.mapping}` : "")),
      ...(mix ? [el("p", {class: "mix"}, mix.sentence)] : []),
      el("div", {class: "tiles"}, ...tiles));
    cards.push(card);
  });
  $("cards").replaceChildren(...cards);
  const s = lib.suggestions, lines = [];
  for (const m of s.mixed) {   // most likely first; before merges: a mix is the worse error
    const a = el("a", {href: "#/" + m.faceset}, "open");
    lines.push(el("p", {class: "mix"}, `${nameOf(m.faceset)} (split ${m.split} / threshold ${m.threshold}) ${m.sentence} `, a));
  }
  for (const g of s.merge) {
    const a = el("a", {href: "#", onclick: (e) => { e.preventDefault(); g.members.forEach((m) => toggleCard(m, true)); }},
                 "select");
    lines.push(el("p", {}, `${g.confident ? "merge" : "maybe merge"}: ${g.members.map(nameOf).join(" + ")} (similarity ${g.similarity}) `, a));
  }
  if (s.note) lines.push(el("p", {}, s.note));
  if (!lines.length) lines.push(el("p", {}, "none"));
  $("suggestions").replaceChildren(...lines);
  $("merge").disabled = selected.size < 2;
  renderNoface();
  renderHistory($("all-history"), lib.history);
}

function renderFaceset(name) {
  const c = lib.cards.find((x) => x.name === name);
  if (!c) { location.hash = ""; return; }
  $("fs-name").replaceChildren(name, label(c));
  const dropped = Object.entries(c.dropped).map(([k, v]) => `${k} ${v}`).join(", ");
  $("fs-info").textContent = `${c.kept} faces` + (dropped ? ` · dropped ${dropped}` : "") +
    (c.mapping ? ` · ${c.mapping}` : "") + " · ";
  $("fs-info").append(el("span", {id: "fs-count"}, `${faceSel.size} selected`));
  const mix = mixedOf.get(name);
  if (mix) $("fs-info").append(" · ", el("span", {class: "mix"}, `${mix.sentence} (s splits it)`));
  $("rename-input").value = c.title;
  $("move-target").replaceChildren(...lib.cards.filter((x) => x.name !== name).map(
    (x) => el("option", {value: x.name}, nameOf(x.name))));
  $("split").disabled = !lib.split;
  const tiles = c.tiles.map((t) => {
    const f = tile(t, name);
    if (faceSel.has(t.file)) f.classList.add("sel");
    f.onclick = () => {
      faceSel.has(t.file) ? faceSel.delete(t.file) : faceSel.add(t.file);
      f.classList.toggle("sel", faceSel.has(t.file));
      $("fs-count").textContent = `${faceSel.size} selected`;
    };
    return f;
  });
  $("fs-tiles").replaceChildren(...tiles);
  renderHistory($("fs-history"), lib.history.filter((h) => h.facesets.includes(name)));
}

// a run's summary in words: plain values as they are, lists by their length, objects one
// level deep (never raw JSON)
function summaryText(summary) {
  const words = (v) => Array.isArray(v) ? (v.length <= 3 && v.every((x) => typeof x !== "object")
    ? v.join(", ") : `${v.length}`) : (v && typeof v === "object")
    ? Object.entries(v).map(([k, x]) => `${k} ${typeof x === "object" && x !== null ? words(x) : x}`).join(", ")
    : String(v);
  return Object.entries(summary || {}).filter(([k]) => k !== "request")
    .map(([k, v]) => `${k.replace(/_/g, " ")} ${words(v)}`).join("; ");
}

function renderHistory(body, hist) {
  const rows = hist.slice().reverse().map((h) => {   // newest first
    const state = el("td", {});
    if (h.undone_by) state.append(`undone by ${h.undone_by}`);
    else if (h.step === "undo" || h.pruned) state.append(h.pruned ? "kept (data pruned)" : "kept");
    else state.append("kept ", el("button", {onclick: () => act("undo", {run: h.id})}, "undo"));
    const touched = h.facesets.length ? ` (${h.facesets.slice(0, 6).join(", ")}` +
      (h.facesets.length > 6 ? ` and ${h.facesets.length - 6} more)` : ")") : "";
    return el("tr", {class: h.undone_by ? "undone" : "", "data-run": h.id},
      el("td", {}, h.step), el("td", {}, (h.when || "?").replace("T", " ")),
      el("td", {}, summaryText(h.summary) + touched), state);
  });
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", {colspan: 4}, "no runs yet"))]));
}

function current() { return decodeURIComponent(location.hash.replace(/^#\/?/, "")); }

function render() {
  if (!lib) return;
  const name = current();
  $("overview").hidden = !!name;
  $("faceset").hidden = !name;
  if (name) renderFaceset(name); else renderOverview();
}

window.addEventListener("hashchange", () => { faceSel.clear(); render(); });
$("search").addEventListener("input", () => render());
$("back").onclick = (e) => { e.preventDefault(); location.hash = ""; };
$("merge").onclick = () => confirmMerge();
$("undo").onclick = () => act("undo", {});
$("rename").onclick = () => act("rename", {faceset: current(), name: $("rename-input").value});
$("drop").onclick = () => faceSel.size && act("drop", {faceset: current(), files: [...faceSel]});
$("move").onclick = () => faceSel.size && act("move", {faceset: current(), files: [...faceSel], into: $("move-target").value});
$("quarantine").onclick = () => ask(`Quarantine ${nameOf(current())}?`,
  [el("p", {}, "Its folder moves to _quarantine and leaves the swap-ready set (undo brings it back).")],
  "Quarantine", async () => { if (await act("quarantine", {faceset: current()})) location.hash = ""; });
$("split").onclick = () => act("split", faceSel.size ? {faceset: current(), files: [...faceSel]} : {faceset: current()});

document.addEventListener("keydown", (e) => {
  if ($("confirm").open) {           // the dialog's own keys only
    if (e.key === "y") { e.preventDefault(); $("confirm-ok").click(); }
    else if (e.key === "n") { e.preventDefault(); $("confirm").close(); }
    return;
  }
  const typing = (e.target.tagName === "INPUT" && e.target.type !== "checkbox") ||
    e.target.tagName === "SELECT";
  if (typing) {
    if (e.key === "Escape") e.target.blur();
    if (e.key === "Enter" && e.target.id === "rename-input") $("rename").click();
    return;
  }
  const name = current();
  const k = e.key;
  if (k === "Escape") { location.hash = ""; return; }
  if (k === "u") { $("undo").click(); return; }
  if (!name) {
    const n = lib ? lib.cards.length : 0;
    if (k === "/") { e.preventDefault(); $("search").focus(); }
    else if (k === "j" || k === "k") {
      const old = document.querySelector(".card.cur");
      cur = Math.max(0, Math.min(n - 1, cur + (k === "j" ? 1 : -1)));
      const c = document.getElementById("card-" + lib.cards[cur].name);
      if (old) old.classList.remove("cur");
      if (c) { c.classList.add("cur"); c.scrollIntoView({block: "nearest"}); }
    } else if (k === "x" && n) { toggleCard(lib.cards[cur].name); }
    else if (k === "Enter" && n) location.hash = "#/" + lib.cards[cur].name;
    else if (k === "m") $("merge").click();
    return;
  }
  if (k === "a") { const c = lib.cards.find((x) => x.name === name); c.tiles.forEach((t) => faceSel.add(t.file)); render(); }
  else if (k === "d") $("drop").click();
  else if (k === "v") $("move").click();
  else if (k === "r") { e.preventDefault(); $("rename-input").focus(); }
  else if (k === "s") $("split").click();
  else if (k === "q") $("quarantine").click();
});

load();
