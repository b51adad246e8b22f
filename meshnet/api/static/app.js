// meshnet status page: renders /api/events (Server-Sent Events carrying the overview)
// and falls back to polling /api/overview. No framework, no build step.
"use strict";

const $ = (sel) => document.querySelector(sel);
const SVG = "http://www.w3.org/2000/svg";
let lastUpdate = 0;

function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.setAttribute("class", v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function age(s) {
  if (s === null || s === undefined) return "never";
  if (s < 120) return `${Math.round(s)} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function bytes(n) {
  if (!n) return "0 B";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  const i = Math.min(u.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  return `${(n / 1024 ** i).toFixed(i ? 1 : 0)} ${u[i]}`;
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

function fill(tbody, rows, empty, cols) {
  tbody.replaceChildren(...(rows.length ? rows
    : [el("tr", { class: "empty" }, el("td", { colspan: cols, text: empty }))]));
}

function badge(health) {
  const label = { self: "this node", fresh: "fresh", stale: "stale", dead: "dead", left: "left" }[health] || health;
  return el("span", { class: `badge ${health}` }, label);
}

function renderProblems(o) {
  const box = $("#problems");
  const problems = o.problems || [];
  box.hidden = problems.length === 0;
  box.textContent = problems.map((p) => "⚠ " + p).join("  ·  ");
}

function renderHeader(o) {
  renderProblems(o);
  const id = o.cluster.id || "not in a cluster";
  $("#cluster-id").replaceChildren(el("code", { title: id }, o.cluster.id ? id.slice(0, 12) : id));
  $("#cluster-size").textContent = o.cluster.size;
  $("#node-name").textContent = `${o.node.name}${o.node.transit_ip ? " · " + o.node.transit_ip : ""}`;
  $("#node-backend").textContent = o.node.backend || "–";
  document.title = `meshnet · ${o.node.name}`;
}

function renderMembers(o) {
  fill($("#members tbody"), o.members.map((m) => el("tr", { "data-node": m.name, "data-health": m.health },
    el("td", {}, el("b", {}, m.name)),
    el("td", {}, badge(m.health)),
    el("td", {}, el("code", {}, m.transit_ip)),
    el("td", {}, el("code", {}, m.endpoint)),
    el("td", {}, m.self ? "–" : age(m.handshake_age)),
    el("td", {}, m.rtt_ms === null ? "–" : `${m.rtt_ms.toFixed(2)} ms`),
    el("td", { class: `agent ${m.agent}` }, m.agent),
    el("td", { class: "num" }, m.self ? "–" : bytes(m.rx_bytes)),
    el("td", { class: "num" }, m.self ? "–" : bytes(m.tx_bytes)),
    el("td", {}, m.backend || "–"),
  )), "no members: this node is not in a cluster", 10);
}

function renderDiagram(o) {
  const svg = $("#mesh");
  const ms = o.members.filter((m) => m.state === "active");
  const cx = 160, cy = 150, r = ms.length > 1 ? 110 : 0;
  const pos = ms.map((m, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(1, ms.length);
    return { m, x: cx + r * Math.cos(a), y: cy + r * Math.sin(a) };
  });
  const me = pos.find((p) => p.m.self);
  const mesh = [], tunnels = [], nodes = [];
  for (let i = 0; i < pos.length; i++) {
    for (let j = i + 1; j < pos.length; j++) {
      const a = pos[i], b = pos[j];
      if (a.m.self || b.m.self) continue;
      mesh.push(el("svg:line", { x1: a.x, y1: a.y, x2: b.x, y2: b.y, class: "mesh" }));
    }
  }
  for (const p of pos) {
    if (!me || p.m.self) continue;
    tunnels.push(el("svg:line", { x1: me.x, y1: me.y, x2: p.x, y2: p.y, class: `tunnel ${p.m.health}`,
      "data-node": p.m.name }, el("svg:title", {}, `${me.m.name} ↔ ${p.m.name}: ${p.m.health}, handshake ${age(p.m.handshake_age)}`)));
  }
  const small = ms.length > 12;
  for (const p of pos) {
    nodes.push(el("svg:g", { class: `host ${p.m.health}`, transform: `translate(${p.x.toFixed(1)},${p.y.toFixed(1)})` },
      el("svg:circle", { r: small ? 11 : 17 }),
      el("svg:text", { y: 4, "text-anchor": "middle", class: small ? "small" : "" }, p.m.name),
      el("svg:title", {}, `${p.m.name} ${p.m.transit_ip}`)));
  }
  svg.replaceChildren(el("svg:g", {}, mesh), el("svg:g", {}, tunnels), el("svg:g", {}, nodes));
}

function renderNetworks(o) {
  fill($("#networks tbody"), o.networks.map((n) => el("tr", { "data-network": n.name },
    el("td", {}, el("b", {}, n.name)),
    el("td", {}, n.vni),
    el("td", {}, el("code", {}, n.subnet)),
    el("td", {}, el("code", {}, n.gateway)),
    el("td", {}, n.mtu ?? "–"),
    el("td", { class: "num" }, n.endpoints),
    el("td", {}, Object.keys(n.endpoints_by_host).length
      ? el("ul", { class: "per-host" }, Object.entries(n.endpoints_by_host).map(([host, eps]) =>
        el("li", { "data-host": host }, el("span", { class: "host-tag" }, host),
          eps.map((e) => el("span", { class: "ep", "data-endpoint": e.name }, `${e.name} `, el("code", {}, e.ip))))))
      : el("span", { class: "muted" }, "none")),
  )), "no networks yet: meshnet network create NAME", 7);
}

function renderServices(o) {
  const card = $("#services-card");
  const list = o.services && (Array.isArray(o.services) ? o.services : o.services.services);
  card.hidden = !Array.isArray(list);
  if (card.hidden) return;
  fill($("#services tbody"), list.map((s) => {
    const tasks = s.tasks || [];
    const running = s.running ?? tasks.filter((t) => t.state === "running").length;
    const desired = s.replicas ?? "–";
    const vips = Object.entries(s.vips || {}).map(([net, ip]) => `${ip} (${net})`).join(", ");
    return el("tr", { "data-service": s.name, "data-running": running, "data-desired": desired },
      el("td", {}, el("b", {}, s.name)),
      el("td", {}, `${s.mode || "replicated"}${s.endpoint_mode ? " · " + s.endpoint_mode : ""}`),
      el("td", { class: running < desired ? "short" : "" }, `${running} / ${desired}`),
      el("td", {}, (s.networks || []).join(", ") || "–", vips ? el("div", { class: "muted" }, "VIP ", el("code", {}, vips)) : null),
      el("td", {}, tasks.length ? el("ul", { class: "per-host" }, tasks.map((t) =>
        el("li", { class: "task", "data-task": t.task, "data-state": t.state },
          el("span", { class: "host-tag" }, t.node || "?"), `${t.task} `,
          el("span", { class: `state ${t.state.includes("down") ? "down" : t.state.split(" ")[0]}` }, t.state), " ",
          el("code", {}, t.ip || ""))))
        : el("span", { class: "muted" }, "none")));
  }), "no services yet: meshnet service create", 5);
}

function renderDns(o) {
  const card = $("#dns-card");
  card.hidden = o.dns === undefined;
  if (card.hidden) return;
  const rows = [];
  for (const [net, recs] of Object.entries(o.dns.records || {})) {
    for (const [name, ips] of Object.entries(recs)) {
      rows.push(el("tr", { "data-network": net, "data-name": name },
        el("td", {}, net), el("td", {}, el("code", {}, name)), el("td", {}, el("code", {}, ips.join(", ") || "–"))));
    }
  }
  fill($("#dns tbody"), rows, "no names yet", 3);
  const c = o.dns.counters || {};
  $("#dns-counters").textContent = `queries ${c.queries ?? 0} · NXDOMAIN ${c.nxdomain ?? 0} · forwarded ${c.forwarded ?? 0} · forward errors ${c.forward_errors ?? 0}`;
}

function renderEvents(o) {
  const evs = [...o.events].reverse();
  fill($("#events tbody"), evs.map((e) => el("tr", { class: e.level, "data-kind": e.kind },
    el("td", { class: "time" }, clock(e.time)),
    el("td", {}, el("span", { class: `kind ${e.kind}` }, e.kind)),
    el("td", {}, e.message))), "nothing yet", 3);
}

function render(o) {
  lastUpdate = Date.now();
  $("#login").hidden = true;
  $("#content").hidden = false;
  renderHeader(o);
  renderDiagram(o);
  renderMembers(o);
  renderNetworks(o);
  renderServices(o);
  renderDns(o);
  renderEvents(o);
  $("#updated").textContent = `updated ${clock(o.generated)}`;
  setConn(true);
}

function setConn(live) {
  const c = $("#conn");
  c.className = `conn ${live ? "on" : "off"}`;
  c.textContent = live ? "live" : "disconnected";
}

function showLogin() {
  $("#login").hidden = false;
  $("#content").hidden = true;
  $("#login-failed").hidden = !location.search.includes("login=failed");
  setConn(false);
}

async function poll() {
  try {
    const r = await fetch("/api/overview", { cache: "no-store" });
    if (r.status === 401) { showLogin(); return false; }
    if (r.ok) render(await r.json());
    return r.ok;
  } catch (e) {
    setConn(false);
    return false;
  }
}

let source = null;
function connect() {
  if (source) source.close();
  source = new EventSource("/api/events");
  source.addEventListener("overview", (ev) => render(JSON.parse(ev.data)));
  source.onerror = async () => {
    setConn(false);
    if (source.readyState === EventSource.CLOSED) {
      // Refused (401) or the agent went away: find out by polling, then retry.
      if ((await poll()) !== false || $("#login").hidden) setTimeout(connect, 2000);
    }
  };
}

// If no update arrives for a while the agent serving this page is gone.
setInterval(() => { if (Date.now() - lastUpdate > 6000) setConn(false); }, 1000);

poll().then((ok) => { if (ok || $("#login").hidden) connect(); });
