// Live view: every 2 s, fetches /page/regions (the page's live regions, rendered on the
// server by the same template blocks as the page itself) and swaps each one in by its id.
// Each poll may land on another replica (that is the point); the strip records who it was,
// or that nobody answered. The hero stays the replica that served the page.
// Without JavaScript the page is the same, as of its last load.
"use strict";

const POLL_MS = 2000;
// A poll that has not answered by then counts as no answer.
const POLL_TIMEOUT_MS = 3000;
// Polls failing this long make the page say so and grey what it shows.
const STALE_MS = 4000;
const STRIP_MAX = 40;
// Message ids remembered to show each message once: far more than the 50 a stream replays.
const SEEN_MAX = 500;
// The server's retry hint, for when the browser gives a stream up instead of retrying.
const REOPEN_MS = 2000;
const $ = (id) => document.getElementById(id);
const LOADED_AT = Date.now();
const REGIONS = new Set((document.body.dataset.regions || "").split(" "));
const UP_AT_LOAD = Number($("served-up")?.textContent) || 0;

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// The strip survives reloads (sessionStorage), so reloads and polls read as one history.
// `hero` is a hero element, the page's or a poll's: it names the replica that rendered it;
// none means no replica answered.
function record(hero, kind) {
  const { instance, name, label, hue } = hero ? hero.dataset : { name: "no answer", hue: 0 };
  let entries = [];
  try { entries = JSON.parse(sessionStorage.getItem("rollcall-strip") || "[]"); } catch (_) {}
  entries.push({ id: instance, name, label, hue: Number(hue) || 0, kind: hero ? kind : "none", at: Date.now() });
  entries = entries.slice(-STRIP_MAX);
  try { sessionStorage.setItem("rollcall-strip", JSON.stringify(entries)); } catch (_) {}
  $("strip").innerHTML = entries
    .map((e) => `<li class="${esc(e.kind)}" style="--hue: ${Number(e.hue) || 0}" title="${esc(e.name)}: ${esc(e.kind)} at ${new Date(e.at).toLocaleTimeString()}">${esc(e.label || e.name)}</li>`)
    .join("");
}

// When polls began to fail; null while they answer.
let failingSince = null;

// No stale green: when nobody answers, the page says since when, and greys what it shows
// (it is the cluster as it was then); it recovers by itself on the next answer.
function showStale() {
  const stale = failingSince !== null && Date.now() - failingSince >= STALE_MS;
  const el = $("stale");
  if (stale) {
    el.textContent = `No replica answers since ${new Date(failingSince).toLocaleTimeString()}: what is shown below is from then.`;
  }
  el.hidden = !stale;
  document.body.classList.toggle("stale", stale);
}

async function poll() {
  let answered = null;
  try {
    const page = encodeURIComponent($("hero").dataset.instance || "");
    const r = await fetch(`/page/regions?page=${page}`, { cache: "no-store", signal: AbortSignal.timeout(POLL_TIMEOUT_MS) });
    if (r.ok) {
      const regions = new DOMParser().parseFromString(await r.text(), "text/html");
      answered = regions.getElementById("hero");
      for (const fresh of [...regions.body.children]) {
        const old = REGIONS.has(fresh.id) && $(fresh.id);
        if (old) old.replaceWith(document.adoptNode(fresh));
      }
    }
  } catch (_) {
    // A replica going away mid-poll: recorded as no answer; the next poll lands elsewhere.
  }
  record(answered, "poll");
  if (answered) {
    $("answering-name").textContent = answered.dataset.name;
    // The regions are the page's replica's view, handed on by whoever answered; when it
    // does not answer, they are the answering replica's own, and the page says so.
    const view = $("verdict-box").dataset;
    // An older replica's regions say nothing of whose view they are.
    const ours = !view.view || view.view === $("hero").dataset.instance;
    $("answering-view").textContent = ours ? ""
      : ` (${$("hero").dataset.name} does not answer: this is ${view.viewName}'s view of the cluster)`;
    // The hero is never swapped: its uptime counts on while its replica answers.
    if (ours) $("served-up").textContent = UP_AT_LOAD + Math.round((Date.now() - LOADED_AT) / 1000);
    $("answering").style.setProperty("--hue", Number(answered.dataset.hue) || 0);
    $("answering").hidden = false;
  }
  if (answered) failingSince = null;
  else if (failingSince === null) failingSince = Date.now();
  showStale();
  setTimeout(poll, POLL_MS);
}

async function callPeers(ev) {
  ev.preventDefault();
  const button = ev.target.querySelector("button");
  const out = $("peer-results");
  button.disabled = true;
  try {
    // Run by the page's replica, wherever the load balancer sends this request.
    const page = encodeURIComponent($("hero").dataset.instance);
    const r = await fetch(`/peer?from=${page}`, { headers: { Accept: "application/json" }, cache: "no-store" });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    const via = body.forwarded_by ? `, handed on by ${esc(body.forwarded_by.name)}` : "";
    const from = `<li class="muted">called from ${esc(body.from.name)} (${esc(body.from.addr)})${via}</li>`;
    const rows = body.results.map((x) =>
      `<li><span class="${x.ok ? "ok" : "bad"}">${x.ok ? "✓" : "✗"}</span> <strong>${esc(x.to.name)}</strong> <code>${esc(x.to.addr)}</code> ` +
      (x.ok ? `${x.rtt_ms.toFixed(2)} ms` : `<span class="err">${esc(x.error)}</span>`) + "</li>");
    out.innerHTML = from + (rows.length ? rows.join("") : '<li class="muted">no other alive member to call yet</li>');
  } catch (e) {
    out.innerHTML = `<li class="bad">${esc(e.message || e)}</li>`;
  } finally {
    button.disabled = false;
  }
}

// Messages: this window's replica streams them; names come from the members list on show.
function nameOf(id) {
  const member = document.querySelector(`#members li[data-id="${CSS.escape(String(id))}"]`);
  return member ? member.dataset.name : "…" + String(id).slice(-6);
}

// Each message is shown once. A stream the browser resumes sends Last-Event-ID and gets
// only newer messages, from whichever replica it lands on; a stream opened anew replays
// the recent history, and one replica's stream may repeat a message that arrives as it
// opens. Repeats are dropped here, and counted (data-repeats) for whoever wonders.
const seen = new Set(); // in the order first seen: the oldest goes first
let repeats = 0;

function firstTime(id) {
  if (seen.has(id)) return false;
  seen.add(id);
  if (seen.size > SEEN_MAX) seen.delete(seen.values().next().value);
  return true;
}

function showMessage(m) {
  if (m.id && !firstTime(String(m.id))) {
    repeats += 1;
    $("messages").dataset.repeats = String(repeats);
    return;
  }
  const li = document.createElement("li");
  li.dataset.id = m.id || "";
  const path = m.via.map(nameOf).join(" → ");
  li.innerHTML = `<span class="text">${esc(m.text)}</span> <span class="path">entered by ${esc(nameOf(m.origin))} · ${esc(path)}</span>`;
  $("messages").prepend(li);
  while ($("messages").children.length > 50) $("messages").lastChild.remove();
}

function listen() {
  if (!window.EventSource) return;
  const events = new EventSource("/events");
  events.addEventListener("message", (ev) => {
    try { showMessage(JSON.parse(ev.data)); } catch (_) {}
  });
  // After a dropped stream the browser reconnects by itself, with Last-Event-ID. An answer
  // that is not a stream (a front door with no replica behind it answers 503) makes it
  // give up for good: open a new one, which replays the history.
  events.addEventListener("error", () => {
    if (events.readyState === EventSource.CLOSED) setTimeout(listen, REOPEN_MS);
  });
}

async function say(ev) {
  ev.preventDefault();
  const input = ev.target.querySelector("input");
  const text = input.value.trim();
  if (!text) return;
  try {
    const r = await fetch("/api/broadcast", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text }),
    });
    if (r.ok) input.value = "";
  } catch (_) {}
}

// The messages the page was served with are shown already.
for (const li of $("messages").querySelectorAll("li[data-id]")) firstTime(li.dataset.id);
record($("hero"), "reload");
$("curl").textContent = "curl " + location.origin + "/";
$("peer-form").addEventListener("submit", callPeers);
$("say").addEventListener("submit", say);
listen();
setTimeout(poll, POLL_MS);
