// geodns console: draws the map once, then polls /console/state every 2 seconds.
// Plain DOM and SVG, no library, nothing loaded from elsewhere (the page's CSP forbids it).
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#4c6ef5", "#f08c00", "#2f9e44", "#e03131", "#ae3ec9", "#1098ad",
  "#d6336c", "#5c940d", "#845ef7", "#e8590c", "#0b7285", "#868e96"];
const siteColor = new Map();
let lastState = null;

function el(tag, attrs = {}, text = null, ns = null) {
  const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

function pct(x) { return (100 * x).toFixed(x < 0.1 ? 1 : 0) + "%"; }

function when(seconds) {
  return new Date(seconds * 1000).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

function why(site) {
  if (site.state === "drained" && site.drain) {
    const d = site.drain;
    let text = "drained by " + (d.by || "unknown");
    if (d.reason) text += ": " + d.reason;
    text += d.until ? " (until " + when(d.until) + ")" : " (until undrained)";
    return text;
  }
  if (site.state === "down") return site.reason || "down";
  return site.checked ? "" : "not checked yet";
}

async function getJSON(path, options) {
  // from the origin: the page may have been opened as http://user:token@host/, and a URL with
  // credentials in it cannot be fetched (the browser sends the ones it was given instead)
  const response = await fetch(location.origin + path,
    Object.assign({ credentials: "same-origin" }, options || {}));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || ("HTTP " + response.status));
  return body;
}

async function drawMap() {
  const world = await getJSON("/console/world.json");
  const group = document.getElementById("countries");
  for (const country of world.countries) {
    const path = el("path", { d: country.d, class: "country", "data-cc": country.cc }, null, SVG);
    path.appendChild(el("title", {}, country.name, SVG));
    group.appendChild(path);
  }
}

function assignColors(sites) {
  sites.forEach((site, index) => {
    if (!siteColor.has(site.name)) siteColor.set(site.name, PALETTE[index % PALETTE.length]);
  });
}

function drawSites(sites) {
  const group = document.getElementById("sites");
  group.replaceChildren();
  const labels = [];  // label boxes placed so far: a label that would overlap one moves down
  for (const site of sites) {
    if (site.lat === null || site.lon === null) continue;
    const x = site.lon * 10, y = -site.lat * 10;
    let labelY = y + 11;
    const width = 20 * (site.name.length + (site.state === "up" ? 0 : site.state.length + 3));
    while (labels.some(b => Math.abs(b.y - labelY) < 36 && x + 28 < b.x + b.w && b.x < x + 28 + width)) {
      labelY += 38;
    }
    labels.push({ x: x + 28, y: labelY, w: width });
    const marker = el("g", { class: "site " + site.state, "data-site": site.name,
      "data-state": site.state }, null, SVG);
    marker.appendChild(el("circle", { cx: x, cy: y, r: site.kind === "dc" ? 16 : 22 }, null, SVG));
    const label = el("text", { x: x + 28, y: labelY }, site.name +
      (site.state === "up" ? "" : " (" + site.state + ")"), SVG);
    marker.appendChild(label);
    marker.appendChild(el("title", {}, site.name + ": " + site.state +
      (why(site) ? " — " + why(site) : ""), SVG));
    group.appendChild(marker);
  }
}

function paintCountries(countries) {
  for (const path of document.querySelectorAll("#countries path")) {
    const entry = countries[path.dataset.cc];
    let fill = null;
    if (entry) {
      const top = Object.entries(entry.sites).sort((a, b) => b[1] - a[1])[0];
      if (top) fill = siteColor.get(top[0]) || null;
      path.dataset.site = top ? top[0] : "";
    } else {
      delete path.dataset.site;
    }
    path.style.fill = fill || "";  // a style: the style sheet's grey would beat an attribute
    path.style.fillOpacity = fill ? "0.6" : "";
  }
}

function drawLegend(sites) {
  const legend = document.getElementById("legend");
  legend.replaceChildren();
  for (const site of sites) {
    const item = el("span", {});
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = siteColor.get(site.name);
    item.append(swatch, site.name);
    legend.appendChild(item);
  }
  legend.appendChild(el("span", {}, "country colour: the site most of its users are sent to"));
}

function fillSitesTable(state) {
  const body = document.querySelector("#sites-table tbody");
  body.replaceChildren();
  for (const site of state.sites) {
    const row = el("tr", { "data-site": site.name, "data-state": site.state });
    row.appendChild(el("td", {}, site.name + (site.city ? " (" + site.city + ")" : "")));
    row.appendChild(el("td", { class: "state " + site.state }, site.state));
    row.appendChild(el("td", { class: "why" }, why(site)));
    const share = el("td", { class: "share" });
    const bar = el("span", { class: "bar" });
    bar.style.width = Math.round(160 * site.share) + "px";
    share.append(bar, pct(site.share) + " (" + site.answers + ")");
    row.appendChild(share);
    body.appendChild(row);
  }
  document.getElementById("share-window").textContent =
    state.answers + " answers over the last " + Math.round(state.share_window_s) + " s";
}

function fillCountriesTable(state) {
  const body = document.querySelector("#countries-table tbody");
  body.replaceChildren();
  const rows = Object.entries(state.countries).map(([code, entry]) => {
    const total = Object.values(entry.sites).reduce((a, b) => a + b, 0);
    return { code, entry, total };
  }).sort((a, b) => b.total - a.total).slice(0, 40);
  for (const { code, entry, total } of rows) {
    const row = el("tr", { "data-country": code });
    row.appendChild(el("td", {}, code === "??" ? "not located" : entry.name + " (" + code + ")"));
    const parts = Object.entries(entry.sites).sort((a, b) => b[1] - a[1])
      .map(([site, n]) => site + " " + pct(n / (total || 1)));
    row.appendChild(el("td", {}, parts.join(", ")));
    body.appendChild(row);
  }
  document.getElementById("countries-source").textContent = state.countries_source === "traffic"
    ? "(" + state.sample_size + " sampled queries of the last 10 minutes)"
    : "(no traffic sampled yet: one user per country)";
}

function fillWhatIfSites(sites) {
  const select = document.getElementById("whatif-site");
  const names = sites.map(s => s.name);
  const current = Array.from(select.options).map(o => o.value);
  if (names.join() === current.join()) return;
  const chosen = select.value;
  select.replaceChildren(...names.map(n => el("option", { value: n }, n)));
  if (names.includes(chosen)) select.value = chosen;
}

async function refresh() {
  try {
    const state = await getJSON("/console/state");
    lastState = state;
    assignColors(state.sites);
    drawSites(state.sites);
    paintCountries(state.countries);
    drawLegend(state.sites);
    fillSitesTable(state);
    fillCountriesTable(state);
    fillWhatIfSites(state.sites);
    const down = state.sites.filter(s => s.state !== "up").length;
    document.getElementById("status").textContent = state.sites.length + " sites, " + down +
      " out of rotation · updated " + new Date(state.now * 1000).toLocaleTimeString();
    document.body.dataset.updated = String(state.now);
  } catch (error) {
    document.getElementById("status").textContent = "cannot reach the server: " + error.message;
  }
}

async function runWhatIf(event) {
  event.preventDefault();
  const action = document.getElementById("whatif-action").value;
  const site = document.getElementById("whatif-site").value;
  const summary = document.getElementById("whatif-summary");
  const table = document.getElementById("whatif-moves");
  summary.textContent = "deciding…";
  try {
    const result = await getJSON("/console/whatif", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ action, site }),
    });
    const body = table.querySelector("tbody");
    body.replaceChildren();
    const total = result.total || 1;
    for (const move of result.moves) {
      const row = el("tr", { "data-country": move.country, "data-from": move.from || "",
        "data-to": move.to || "" });
      const cells = [move.name + " (" + move.country + ")", move.from || "-", move.to || "(none)",
        pct(move.weight / total),
        move.added_km === null ? "-" : (move.added_km >= 0 ? "+" : "") + move.added_km + " km",
        move.added_rtt_ms === null ? "-" : (move.added_rtt_ms >= 0 ? "+" : "") +
          move.added_rtt_ms.toFixed(1) + " ms",
        move.records.join(", "), move.examples.join(", ")];
      for (const text of cells) row.appendChild(el("td", {}, text));
      body.appendChild(row);
    }
    table.hidden = result.moves.length === 0;
    const who = result.source === "traffic" ? "sampled queries" : "(country, record) pairs";
    summary.textContent = (action === "drain" ? "Draining " : "Failing ") + site + ": " +
      result.moved + " of " + result.total + " " + who + " would move" +
      (result.down_after.length ? "; out of rotation then: " + result.down_after.join(", ") : "") + ".";
    const moved = new Set(result.moves.map(m => m.country));
    for (const path of document.querySelectorAll("#countries path")) {
      path.classList.toggle("moved", moved.has(path.dataset.cc));
    }
  } catch (error) {
    summary.textContent = "what-if failed: " + error.message;
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("whatif-form").addEventListener("submit", runWhatIf);
  try { await drawMap(); } catch (error) {
    document.getElementById("status").textContent = "map: " + error.message;
  }
  await refresh();
  setInterval(refresh, POLL_MS);
});
