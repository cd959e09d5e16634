// Live view: polls /api/status every 2 s. Each poll may land on another replica (that is
// the point), so the whole view is redrawn from whichever replica answered, and the strip
// records who it was. The server renders the same markup for readers without JavaScript.
"use strict";

const POLL_MS = 2000;
const STRIP_MAX = 40;
const $ = (id) => document.getElementById(id);

// Same colour per replica as the server's page::hue (FNV-1a).
function hue(id) {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(id)) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h % 360;
}

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

const mib = (b) => (b / 1048576).toFixed(1) + " MiB";
function ago(ms) {
  if (ms < 1000) return ms + " ms ago";
  if (ms < 120000) return Math.round(ms / 1000) + " s ago";
  return Math.floor(ms / 60000) + " min ago";
}

function memberHtml(m) {
  const rtt = m.self ? "—" : m.rtt_ms == null ? "…" : m.rtt_ms.toFixed(2) + " ms";
  const sources = m.sources.map((s) => `<span class="src">${esc(s)}</span>`).join("");
  return `<li class="member state-${esc(m.state)}${m.self ? " me" : ""}" style="--hue: ${hue(m.instance_id)}">
    <div class="m-head"><span class="dot" title="${esc(m.state)}"></span><strong>${esc(m.name)}</strong>${m.self ? '<span class="tag">this replica</span>' : ""}</div>
    <div class="m-addr">${esc(m.addr)}</div>
    <dl>
      <div><dt>state</dt><dd>${esc(m.state)}</dd></div>
      <div><dt>RTT</dt><dd>${rtt}</dd></div>
      <div><dt>CPU</dt><dd>${m.system.cpu_pct.toFixed(1)} %</dd></div>
      <div><dt>RSS</dt><dd>${mib(m.system.rss_bytes)}</dd></div>
      <div><dt>seen</dt><dd>${m.self ? "now" : ago(m.last_seen_ms_ago)}</dd></div>
    </dl>
    <div class="sources">${sources}</div>
    ${m.error ? `<div class="err">${esc(m.error)}</div>` : ""}
  </li>`;
}

function methodHtml(d) {
  let run = "";
  if (d.last_run_ms_ago != null) run = ago(d.last_run_ms_ago) + (d.duration_ms != null ? ` · took ${d.duration_ms} ms` : "");
  const evidence = d.evidence
    .map((e) => `<tr class="evidence"><td>↳</td><td><span class="st st-${esc(e.status)}">${esc(e.status)}</span></td><td></td><td><code>${esc(e.subject)}</code> ${esc(e.detail)}</td></tr>`)
    .join("");
  return `<tr><td>${esc(d.method)}</td><td><span class="st st-${esc(d.status)}">${esc(d.status)}</span></td><td>${d.found}</td><td>${esc(d.detail)}<div class="muted">${run}</div></td></tr>${evidence}`;
}

function notMembersHtml(s) {
  const rows = [
    ...s.aliases.map((a) => `<li><code>${esc(a.addr)}</code> <span class="st st-partial">alias</span> ${esc(a.note)}: answered as ${a.answered_as.length} replica(s)</li>`),
    ...s.foreign.map((f) => `<li><code>${esc(f.addr)}</code> <span class="st st-fails">foreign</span> ${esc(f.reason)}</li>`),
  ];
  return rows.length ? rows.join("") : '<li class="muted">nothing else answered</li>';
}

function meshHtml(s) {
  const ids = Object.keys(s.mesh);
  let html = "<tr><th>from \\ to</th>" + ids.map((id) => `<th>${esc(nameOf(id))}</th>`).join("") + "</tr>";
  for (const from of ids) {
    html += `<tr><th>${esc(nameOf(from))}</th>`;
    for (const to of ids) {
      const c = (s.mesh[from] || {})[to];
      if (from === to) html += '<td class="self">·</td>';
      else if (!c) html += '<td class="none">?</td>';
      else if (c.ok) {
        const rtt = c.rtt_ms || 0;
        html += `<td class="${rtt < 1 ? "fast" : rtt < 5 ? "ok" : "slow"}">${rtt.toFixed(2)} ms</td>`;
      } else html += `<td class="fail" title="${esc(c.error || "no answer")}">✗</td>`;
    }
    html += "</tr>";
  }
  return html;
}

function timelineHtml(s) {
  return s.timeline.slice(-30).reverse().map((e) => {
    const subject = e.name ? `${e.name} ${e.addr}` : e.addr || "";
    return `<li><span class="t">${esc(e.at)}</span> <b>${esc(e.kind)}</b> ${esc(subject)} <span class="muted">${esc(e.detail)} · seen by ${esc(e.by ? nameOf(e.by) : "")}</span></li>`;
  }).join("");
}

function render(s) {
  for (const m of s.members) names[m.instance_id] = m.name;
  const me = s.self;
  const hero = $("hero");
  hero.style.setProperty("--hue", hue(me.instance_id));
  $("served-name").textContent = me.name;
  $("served-addr").textContent = me.addr;
  $("served-id").textContent = "…" + me.instance_id.slice(-6);
  $("served-up").textContent = me.system.uptime_secs;
  document.title = me.name + " · rollcall";
  $("draining").hidden = !s.draining;
  $("verdict").textContent = s.verdict;
  $("membership").textContent = "Membership " + s.membership + ".";
  for (const m of s.members) names[m.instance_id] = m.name;
  $("relay-mode").textContent = s.relay.hub ? "relayed through hub " + nameOf(s.relay.hub)
    : s.relay.mode === "relay" ? "relay: " + s.relay.detail : "sent directly to every member";
  const alive = s.members.filter((m) => m.state === "alive").length;
  $("found").textContent = s.expected_replicas ? `${alive} / ${s.expected_replicas}` : String(alive);
  $("members").innerHTML = s.members.map(memberHtml).join("");
  $("discovery").tBodies[0].innerHTML = s.discovery.map(methodHtml).join("");
  $("not-members").innerHTML = notMembersHtml(s);
  $("mesh").innerHTML = meshHtml(s);
  $("timeline").innerHTML = timelineHtml(s);
  const rtts = s.members.map((m) => m.rtt_ms).filter((r) => r != null);
  const direct = rtts.length ? `direct calls from here average ${(rtts.reduce((a, b) => a + b, 0) / rtts.length).toFixed(2)} ms` : "no direct call yet";
  const lb = s.via_load_balancer;
  $("via-lb").textContent = !lb ? `${direct}; set PUBLIC_URL to compare with a call through the load balancer`
    : lb.ok ? `Through the load balancer: ${lb.rtt_ms.toFixed(2)} ms (answered by ${nameOf(lb.answered_by)}); ${direct}`
    : `Through the load balancer: ${lb.error}; ${direct}`;
  const distinct = new Set(Object.values(s.views)).size;
  $("views").textContent = s.converged
    ? `views agree (${Object.keys(s.views).length} replicas, view ${s.view_hash})`
    : `split views: ${distinct} different member sets`;
}

// The strip survives reloads (sessionStorage), so reloads and polls read as one history.
function record(instanceId, name, kind) {
  let entries = [];
  try { entries = JSON.parse(sessionStorage.getItem("rollcall-strip") || "[]"); } catch (_) {}
  entries.push({ id: instanceId, name, kind, at: Date.now() });
  entries = entries.slice(-STRIP_MAX);
  try { sessionStorage.setItem("rollcall-strip", JSON.stringify(entries)); } catch (_) {}
  $("strip").innerHTML = entries
    .map((e) => `<li class="${e.kind}" style="--hue: ${hue(e.id)}" title="${esc(e.kind)} at ${new Date(e.at).toLocaleTimeString()}">${esc(e.name)}</li>`)
    .join("");
}

async function poll() {
  try {
    const r = await fetch("/api/status", { headers: { Accept: "application/json" }, cache: "no-store" });
    if (r.ok) {
      const s = await r.json();
      render(s);
      record(s.self.instance_id, s.self.name, "poll");
    }
  } catch (_) {
    // A replica going away mid-poll is normal here; the next poll lands elsewhere.
  }
  setTimeout(poll, POLL_MS);
}

async function callPeers(ev) {
  ev.preventDefault();
  const button = ev.target.querySelector("button");
  const out = $("peer-results");
  button.disabled = true;
  try {
    const r = await fetch("/peer", { headers: { Accept: "application/json" }, cache: "no-store" });
    const body = await r.json();
    const from = `<li class="muted">called from ${esc(body.from.name)} (${esc(body.from.addr)})</li>`;
    const rows = body.results.map((x) =>
      `<li><span class="${x.ok ? "ok" : "bad"}">${x.ok ? "✓" : "✗"}</span> <strong>${esc(x.to.name)}</strong> <code>${esc(x.to.addr)}</code> ` +
      (x.ok ? `${x.rtt_ms.toFixed(2)} ms` : `<span class="err">${esc(x.error)}</span>`) + "</li>");
    out.innerHTML = from + (rows.length ? rows.join("") : '<li class="muted">no other alive member to call yet</li>');
  } catch (e) {
    out.innerHTML = `<li class="bad">${esc(e)}</li>`;
  } finally {
    button.disabled = false;
  }
}

// Messages: this window's replica streams them; names come from the last status seen.
let names = {};
for (const li of document.querySelectorAll("#members li[data-id]")) names[li.dataset.id] = li.dataset.name;
const nameOf = (id) => names[id] || "…" + String(id).slice(-6);

function showMessage(m) {
  const li = document.createElement("li");
  const path = m.via.map(nameOf).join(" → ");
  li.innerHTML = `<span class="text">${esc(m.text)}</span> <span class="path">entered by ${esc(nameOf(m.origin))} · ${esc(path)}</span>`;
  $("messages").prepend(li);
  while ($("messages").children.length > 50) $("messages").lastChild.remove();
}

function listen() {
  if (!window.EventSource) return;
  $("messages").innerHTML = ""; // the stream starts with the recent history
  const events = new EventSource("/events");
  events.addEventListener("message", (ev) => {
    try { showMessage(JSON.parse(ev.data)); } catch (_) {}
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

const hero = $("hero");
record(hero.dataset.instance, hero.dataset.name, "reload");
$("curl").textContent = "curl " + location.origin + "/";
$("peer-form").addEventListener("submit", callPeers);
$("say").addEventListener("submit", say);
listen();
setTimeout(poll, POLL_MS);
