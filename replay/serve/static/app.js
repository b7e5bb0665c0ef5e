// The page of `scope-replay serve`: the map of a view at a moment, a time slider over the
// recorded span, a node's detail panel. Everything it shows comes from the API; the URL's
// query holds what is shown (view, moment, window, options, selection, diff), so a link
// shows the same map. The token, when the server asks for one, comes in the URL's fragment
// (#token=...), which browsers never send to a server or put in a Referer.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const token = new URLSearchParams(location.hash.slice(1)).get("token")
    || sessionStorage.getItem("scope-token");
  if (token) sessionStorage.setItem("scope-token", token);

  const state = {
    view: "processes", t: null, window: "15s", pseudo: "hide", unconnected: false,
    lan: false, stack: true, node: null, diff: null, q: "",
  };
  let span = null;          // /api/span
  let cy = null;
  const positions = new Map();  // node id -> {x, y}: a node stays where it was first put
  let drawSeq = 0;
  let playing = null;
  const PSEUDO_X = 900;

  // -- the API -----------------------------------------------------------------------------
  async function api(path, params) {
    const query = new URLSearchParams(params || {}).toString();
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const response = await fetch(path + (query ? "?" + query : ""), { headers });
    // (an answer not from the app, a proxy's say, is no JSON: its status says what failed)
    const json = (response.headers.get("content-type") || "").startsWith("application/json");
    const body = json ? await response.json() : {};
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    if (!json) throw new Error(`${path}: the answer is not JSON`);
    return body;
  }

  function options() {
    const o = { window: state.window, pseudo: state.pseudo,
      unconnected: state.unconnected ? "show" : "hide" };
    if (state.lan) o.unknown_lan = "true";
    return o;
  }

  // -- the moment: milliseconds since the epoch in the page, Unix seconds in the API ------
  const seconds = (ms) => (ms / 1000).toFixed(3);
  const iso = (ms) => new Date(ms).toISOString();
  // Whole milliseconds inside the log's extent (the API refuses a moment outside it).
  const spanStart = () => Math.ceil(span.start_ns / 1e6);
  const spanEnd = () => Math.floor(span.end_ns / 1e6);
  // The first moment after history the log dropped (--archive none); none can be answered
  // before it (a window that still reaches back is refused by the API, which says so).
  const firstKept = () => span.dropped_to_ns === null ? spanStart()
    : Math.min(spanEnd(), Math.floor(span.dropped_to_ns / 1e6) + 1);

  // -- URL state ---------------------------------------------------------------------------
  function readUrl() {
    const q = new URLSearchParams(location.search);
    for (const key of ["view", "window", "pseudo", "node", "q"]) {
      if (q.get(key)) state[key] = q.get(key);
    }
    state.t = linkedMoment(q.get("t"));
    state.diff = linkedMoment(q.get("diff"));
    for (const [id, x, y] of parsedPositions(q.get("pos"))) positions.set(id, { x, y });
    state.unconnected = q.get("unconnected") === "show";
    state.lan = q.get("lan") === "1";
    state.stack = q.get("stack") !== "0";
  }

  // A moment of a link (Unix seconds) in milliseconds; null, as if none were given, for
  // what is no number (a link typed or cut short by hand).
  function linkedMoment(text) {
    const ms = Math.round(Number(text) * 1000);
    return text && Number.isFinite(ms) ? ms : null;
  }

  function writeUrl() {
    const q = new URLSearchParams();
    q.set("view", state.view);
    if (state.t !== null) q.set("t", seconds(state.t));
    q.set("window", state.window);
    if (state.pseudo !== "hide") q.set("pseudo", state.pseudo);
    if (state.unconnected) q.set("unconnected", "show");
    if (state.lan) q.set("lan", "1");
    if (!state.stack) q.set("stack", "0");
    if (state.node) q.set("node", state.node);
    if (state.diff !== null) q.set("diff", seconds(state.diff));
    if (state.q) q.set("q", state.q);
    const drawn = linkedPositions();
    if (drawn) q.set("pos", drawn);
    history.replaceState(null, "", "?" + q.toString() + location.hash);
  }

  // Where the drawn nodes are, in the link (whole pixels), so that a shared link shows the
  // map as it was arranged; a map of more nodes than a link should carry is left out.
  const MAX_LINKED_NODES = 300;
  function linkedPositions() {
    if (!cy || cy.nodes().length === 0 || cy.nodes().length > MAX_LINKED_NODES) return null;
    return JSON.stringify(cy.nodes().map((n) =>
      [n.id(), Math.round(n.position("x")), Math.round(n.position("y"))]));
  }

  function parsedPositions(text) {
    if (!text) return [];
    try {
      const parsed = JSON.parse(text);
      return Array.isArray(parsed) ? parsed.filter((p) => Array.isArray(p) && p.length === 3
        && typeof p[0] === "string" && Number.isFinite(p[1]) && Number.isFinite(p[2])) : [];
    } catch (error) {
      return [];  // a link cut short: the map is placed afresh
    }
  }

  function showControls() {
    $("view").value = state.view;
    $("window").value = state.window;
    $("pseudo").value = state.pseudo;
    $("unconnected").checked = state.unconnected;
    $("lan").checked = state.lan;
    $("stack").checked = state.stack;
    $("search").value = state.q;
    $("diff").classList.toggle("active", state.diff !== null);
    $("diff").textContent = state.diff !== null ? "Diff from " + iso(state.diff) + " ×" : "Diff from here";
  }

  // -- the timeline ------------------------------------------------------------------------
  function drawDensity() {
    const canvas = $("density");
    const width = canvas.clientWidth;
    canvas.width = width;
    const ctx = canvas.getContext("2d");
    const counts = span.event_counts;
    const most = Math.max(1, ...counts);
    const slot = width / counts.length;
    ctx.clearRect(0, 0, width, canvas.height);
    const total = spanEnd() - spanStart() || 1;
    if (span.dropped_to_ns !== null) {  // dropped history: grey, with no density drawn
      ctx.fillStyle = "rgba(120, 120, 120, 0.3)";
      ctx.fillRect(0, 0, ((firstKept() - spanStart()) / total) * width, canvas.height);
    }
    ctx.fillStyle = "rgba(220, 60, 30, 0.35)";  // losses, shaded over their span
    for (const loss of span.losses) {
      const x0 = ((loss.from_ns / 1e6 - spanStart()) / total) * width;
      const x1 = ((loss.to_ns / 1e6 - spanStart()) / total) * width;
      ctx.fillRect(x0, 0, Math.max(2, x1 - x0), canvas.height);
    }
    ctx.fillStyle = "#5b7db8";
    counts.forEach((count, i) => {
      const h = count ? Math.max(1, (Math.log1p(count) / Math.log1p(most)) * canvas.height) : 0;
      ctx.fillRect(i * slot, canvas.height - h, Math.max(1, slot - 0.5), h);
    });
  }

  function setupSlider() {
    const slider = $("slider");
    slider.min = 0;
    slider.max = spanEnd() - spanStart();
    slider.value = state.t - spanStart();
  }

  function clampMoment(ms) {
    return Math.min(spanEnd(), Math.max(firstKept(), ms));
  }

  async function loadSpan() {
    span = await api("/api/span", { buckets: 400 });
    document.body.dataset.spanStart = String(spanStart());
    document.body.dataset.spanEnd = String(spanEnd());
  }

  // -- the map -----------------------------------------------------------------------------
  function shapeOf(node) {
    if (node.rank === "theinternet") return "barrel";
    return { square: "round-rectangle", hexagon: "hexagon", circle: "ellipse", cloud: "barrel" }[node.shape]
      || "ellipse";
  }

  function hash(text) {
    let h = 2166136261;
    for (let i = 0; i < text.length; i++) { h ^= text.charCodeAt(i); h = Math.imul(h, 16777619); }
    return (h >>> 0) / 4294967296;
  }

  // Where a node first seen goes: the Internet at the sides (inbound left, outbound right),
  // others next to a neighbour already placed, else on a spiral around the middle. A node
  // keeps its place for as long as the page is open, so moving in time does not shuffle it.
  function place(id, neighbours) {
    if (positions.has(id)) return positions.get(id);
    let spot;
    if (id === "in-theinternet") spot = { x: -PSEUDO_X, y: 0 };
    else if (id === "out-theinternet") spot = { x: PSEUDO_X, y: 0 };
    else {
      const anchor = neighbours.map((n) => positions.get(n)).find((p) => p && Math.abs(p.x) !== PSEUDO_X);
      const angle = hash(id) * 2 * Math.PI;
      if (anchor) {
        const r = 110 + 60 * hash(id + "r");
        spot = { x: anchor.x + r * Math.cos(angle), y: anchor.y + r * Math.sin(angle) };
      } else {
        const k = positions.size + 1;
        const r = 70 * Math.sqrt(k);
        spot = { x: r * Math.cos(k * 2.4), y: r * Math.sin(k * 2.4) };
      }
    }
    positions.set(id, spot);
    return spot;
  }

  function elementsOf(topology, diff) {
    const nodes = { ...topology.nodes };
    const added = new Set(), removed = new Set(), addedEdges = new Set(), removedEdges = [];
    if (diff) {
      const addedIds = new Set(diff.add.map((n) => n.id));
      for (const [id, node] of Object.entries(nodes)) {
        if ((node.members || [id]).some((m) => addedIds.has(m))) added.add(id);
      }
      // What disappeared is drawn as it was, up to a few hundred nodes (a map to read).
      diff.remove.slice(0, 300).forEach((n) => { removed.add(n.id); nodes[n.id] = n; });
      diff.edges.add.forEach((e) => addedEdges.add(e.source + "\u0000" + e.target));
      diff.edges.remove.forEach((e) => { if (nodes[e.source] && nodes[e.target]) removedEdges.push(e); });
    }
    const neighbours = new Map();
    const link = (a, b) => { (neighbours.get(a) || neighbours.set(a, []).get(a)).push(b); };
    for (const e of [...topology.edges, ...removedEdges]) { link(e.source, e.target); link(e.target, e.source); }
    // Ids sorted (the API's order): the same map places the same way.
    const placedFirst = Object.keys(nodes).sort((a, b) =>
      (neighbours.has(b) ? 1 : 0) - (neighbours.has(a) ? 1 : 0));
    const elements = [];
    for (const id of placedFirst) {
      const node = nodes[id];
      const classes = [node.pseudo ? "pseudo" : "", added.has(id) ? "added" : "", removed.has(id) ? "removed" : ""];
      elements.push({
        group: "nodes",
        data: { id, label: node.label + (node.labelMinor ? "\n" + node.labelMinor : ""), shape: shapeOf(node),
          search: (node.label + " " + node.labelMinor + " " + id).toLowerCase(),
          members: node.members || [id] },
        position: { ...place(id, neighbours.get(id) || []) },
        classes: classes.filter(Boolean).join(" "),
      });
    }
    const edge = (e, cls, count, open) => ({
      group: "edges",
      data: { id: "e:" + e.source + "\u0000" + e.target, source: e.source, target: e.target,
        count, width: Math.min(12, 1 + 2 * Math.log2(Math.max(1, count))) },
      classes: [cls, open ? "" : "past"].filter(Boolean).join(" "),
    });
    for (const e of topology.edges) {
      const cls = addedEdges.has(e.source + "\u0000" + e.target) || (diff && added.has(e.source) && added.has(e.target)) ? "added" : "";
      elements.push(edge(e, cls, e.connections, e.open_connections > 0));
    }
    for (const e of removedEdges) elements.push(edge(e, "removed", e.connections_before, false));
    return elements;
  }

  function createMap() {
    cy = cytoscape({
      container: $("map"),
      minZoom: 0.05,
      maxZoom: 4,
      style: [
        { selector: "node", style: {
          label: "data(label)", shape: "data(shape)", "text-wrap": "wrap", "text-valign": "bottom",
          "text-margin-y": 4, "font-size": 11, width: 30, height: 30,
          "background-color": "#7b93c7", "border-width": 1, "border-color": "#45598a" } },
        { selector: "node.pseudo", style: { "background-color": "#c9ced8", "border-color": "#8890a0", width: 44, height: 30 } },
        { selector: "node:selected", style: { "border-width": 4, "border-color": "#f0a000" } },
        { selector: "edge", style: {
          width: "data(width)", "line-color": "#8a97b0", "target-arrow-color": "#8a97b0",
          "target-arrow-shape": "triangle", "curve-style": "bezier", "arrow-scale": 0.8 } },
        { selector: "edge.past", style: { "line-style": "dashed" } },
        { selector: ".added", style: { "background-color": "#3fae5a", "line-color": "#3fae5a", "target-arrow-color": "#3fae5a" } },
        { selector: ".removed", style: { "background-color": "#e0605a", "line-color": "#e0605a", "target-arrow-color": "#e0605a", opacity: 0.7 } },
        { selector: ".faded", style: { opacity: 0.15 } },
        { selector: ".match", style: { "border-width": 4, "border-color": "#d04" } },
      ],
      layout: { name: "preset" },
    });
    cy.on("tap", "node", (event) => selectNode(event.target.id()));
    cy.on("tap", (event) => { if (event.target === cy) selectNode(null); });
    cy.on("dragfree", "node", (event) => {
      positions.set(event.target.id(), { ...event.target.position() });
      writeUrl();
    });
  }

  // Nodes seen for the first time are spread by a force layout, with every node placed
  // before held still: what was on the map stays where it was.
  function settleNew(known) {
    const fresh = cy.nodes().filter((n) => !known.has(n.id()));
    if (fresh.length === 0) return;
    const held = cy.nodes().filter((n) => known.has(n.id()) || n.hasClass("pseudo"));
    held.lock();
    cy.layout({ name: "cose", animate: false, randomize: false, fit: false,
      idealEdgeLength: () => 140, nodeRepulsion: () => 60000, nodeOverlap: 40,
      numIter: 600 }).run();
    held.unlock();
    fresh.forEach((n) => {
      if (!n.hasClass("pseudo")) positions.set(n.id(), { ...n.position() });
    });
  }

  function frame() {
    cy.fit(undefined, 60);
    if (cy.zoom() > 1.2) { cy.zoom(1.2); cy.center(); }
  }

  function applySearch() {
    const q = state.q.trim().toLowerCase();
    cy.elements().removeClass("faded match");
    if (!q) return;
    const hits = cy.nodes().filter((n) => n.data("search").includes(q));
    hits.addClass("match");
    cy.elements().not(hits.union(hits.connectedEdges())).addClass("faded");
  }

  async function draw() {
    const seq = ++drawSeq;
    const moment = state.t;
    writeUrl();
    $("moment").textContent = iso(moment);
    $("status").textContent = "loading…";
    try {
      const params = { timestamp: seconds(moment), ...options() };
      const requests = [api("/api/topology/" + encodeURIComponent(state.view),
        state.stack ? { ...params, stack: "true" } : params)];
      if (state.diff !== null) {
        requests.push(api("/api/diff/" + encodeURIComponent(state.view),
          { from: seconds(state.diff), to: seconds(moment), ...options() }));
      }
      const [topology, diff] = await Promise.all(requests);
      if (seq !== drawSeq) return;  // a later moment was asked for meanwhile
      const fresh = cy.elements().length === 0;
      const known = new Set(positions.keys());
      cy.batch(() => {
        cy.elements().remove();
        cy.add(elementsOf(topology, diff));
      });
      settleNew(known);
      writeUrl();  // with where the nodes went
      if (state.node && $("panel").hidden) { $("panel").hidden = false; cy.resize(); }
      if (fresh) frame();
      if (state.node && cy.getElementById(state.node).length) cy.getElementById(state.node).select();
      applySearch();
      const s = topology.stats;
      $("status").textContent = `${s.node_count} nodes, ${s.edge_count} edges, ${s.filtered_nodes} filtered`;
      $("warnings").textContent = topology.warnings.join(" · ");
      document.body.dataset.drawnAt = String(moment);
      // Since the page was asked for, to the first map drawn (the benchmark reads it).
      if (!document.body.dataset.firstDrawnMs) document.body.dataset.firstDrawnMs = String(performance.now());
      document.body.dataset.drawn = String(seq);
      if (state.node) showNode();
    } catch (error) {
      if (seq === drawSeq) $("status").textContent = "error: " + error.message;
    }
  }

  // -- the detail panel --------------------------------------------------------------------
  function selectNode(id) {
    state.node = id;
    writeUrl();
    if (id) showNode(); else $("panel").hidden = true;
    cy.resize();  // the panel takes its width from the map's, or gives it back
  }

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    return td;
  }

  function connectionsTable(title, rows) {
    const part = document.createDocumentFragment();
    const h = document.createElement("h3");
    h.textContent = `${title} (${rows.length})`;
    part.appendChild(h);
    const table = document.createElement("table");
    table.className = "connections";
    const head = document.createElement("tr");
    for (const name of ["peer", "client", "server", "state", "opened", "closed", "positions"]) {
      const th = document.createElement("th"); th.textContent = name; head.appendChild(th);
    }
    table.appendChild(head);
    for (const row of rows) {
      const tr = document.createElement("tr");
      for (const value of [row.peer_label, row.client, row.server, row.state, row.opened_at,
        row.closed_at, (row.positions || []).join(" ")]) tr.appendChild(cell(value));
      table.appendChild(tr);
    }
    part.appendChild(table);
    return part;
  }

  async function showNode() {
    const id = state.node;
    const body = $("panel-body");
    $("panel").hidden = false;
    try {
      const details = await api("/api/node/" + encodeURIComponent(state.view) + "/" + encodeURIComponent(id),
        { timestamp: seconds(state.t), ...options() });
      if (id !== state.node) return;
      body.replaceChildren();
      const h = document.createElement("h2");
      h.textContent = details.node.label;
      const minor = document.createElement("div");
      minor.className = "minor";
      minor.textContent = details.node.labelMinor + " · " + details.node.id;
      body.append(h, minor);
      const meta = document.createElement("table");
      for (const m of details.node.metadata) {
        const tr = document.createElement("tr");
        tr.append(cell(m.label), cell(m.value));
        meta.appendChild(tr);
      }
      for (const p of details.node.parents) {
        const tr = document.createElement("tr");
        tr.append(cell(p.topologyId), cell(p.label));
        meta.appendChild(tr);
      }
      body.appendChild(meta);
      const stacked = cy.getElementById(id).data("members") || [];
      if (stacked.length > 1) {
        const note = document.createElement("p");
        note.className = "minor";
        note.textContent = `One of ${stacked.length} alike, stacked: ${stacked.join(", ")}`;
        body.appendChild(note);
      }
      body.appendChild(connectionsTable("Inbound", details.inbound));
      body.appendChild(connectionsTable("Outbound", details.outbound));
      document.body.dataset.panel = id;
    } catch (error) {
      if (id !== state.node) return;
      body.replaceChildren();
      body.appendChild(document.createTextNode(error.message));
      document.body.dataset.panel = id;
    }
  }

  // -- moving in time ----------------------------------------------------------------------
  function moveTo(ms) {
    state.t = clampMoment(ms);
    $("slider").value = state.t - spanStart();
    draw();
  }

  function stepMs() { return parseInt($("step").value, 10); }

  function togglePlay() {
    if (playing) {
      clearInterval(playing); playing = null; $("play").textContent = "▶"; return;
    }
    $("play").textContent = "⏸";
    playing = setInterval(() => {
      if (state.t >= spanEnd()) { togglePlay(); return; }
      moveTo(state.t + stepMs());
    }, 1000);
  }

  // Live mode follows the recordings under way; one that stops is said (with its reason),
  // and once none is left the page stops following: the log's end will not move.
  let liveTimer = null;
  function stoppedNote(recording) {
    return `recording ${recording.id} (${recording.host}) stopped at ${recording.ended}`
      + (recording.stop_reason ? ` (${recording.stop_reason})` : "");
  }

  function setLive(on) {
    clearInterval(liveTimer);
    liveTimer = null;
    if (!on) return;
    $("live-note").textContent = "";
    const following = new Set();  // recordings seen running since live mode began
    let liveChecks = 0;
    const follow = async () => {
      try {
        await loadSpan();
        setupSlider();
        drawDensity();
        moveTo(spanEnd());
        const stopped = span.recordings.filter((r) => r.stop_reason);
        const running = span.recordings.length - stopped.length;
        const notes = stopped.filter((r) => following.has(r.id)).map(stoppedNote);
        span.recordings.forEach((r) => { if (!r.stop_reason) following.add(r.id); });
        if (running === 0) {
          const last = stopped.reduce((a, b) => (b.ended > a.ended ? b : a), stopped[0]);
          if (notes.length === 0 && last) notes.push(stoppedNote(last));
          notes.push("no recording is running: live mode stopped");
          $("live").checked = false;
          clearInterval(liveTimer);
          liveTimer = null;
        }
        if (notes.length) $("live-note").textContent = notes.join(" · ");
        document.body.dataset.liveChecks = String(++liveChecks);
      } catch (error) { $("status").textContent = "error: " + error.message; }
    };
    follow();
    liveTimer = setInterval(follow, 2000);
  }

  function wire() {
    let pending = null;
    $("slider").addEventListener("input", () => {
      state.t = clampMoment(spanStart() + parseInt($("slider").value, 10));
      $("slider").value = state.t - spanStart();
      $("moment").textContent = iso(state.t);
      clearTimeout(pending);
      pending = setTimeout(draw, 60);  // while dragging, draw the moment the hand rests on
    });
    $("step-back").addEventListener("click", () => moveTo(state.t - stepMs()));
    $("step-forward").addEventListener("click", () => moveTo(state.t + stepMs()));
    $("play").addEventListener("click", togglePlay);
    $("live").addEventListener("change", () => setLive($("live").checked));
    $("view").addEventListener("change", () => {
      state.view = $("view").value; state.node = null; $("panel").hidden = true;
      positions.clear(); cy.elements().remove(); draw();
    });
    $("window").addEventListener("change", () => { state.window = $("window").value.trim() || "15s"; draw(); });
    $("pseudo").addEventListener("change", () => { state.pseudo = $("pseudo").value; draw(); });
    $("unconnected").addEventListener("change", () => { state.unconnected = $("unconnected").checked; draw(); });
    $("lan").addEventListener("change", () => { state.lan = $("lan").checked; draw(); });
    $("stack").addEventListener("change", () => { state.stack = $("stack").checked; draw(); });
    $("search").addEventListener("input", () => { state.q = $("search").value; writeUrl(); applySearch(); });
    $("diff").addEventListener("click", () => {
      state.diff = state.diff === null ? state.t : null; showControls(); draw();
    });
    $("close-panel").addEventListener("click", () => selectNode(null));
    window.addEventListener("resize", () => span && drawDensity());
  }

  async function start() {
    readUrl();
    createMap();
    wire();
    try {
      await loadSpan();
    } catch (error) {
      $("status").textContent = "error: " + error.message;
      return;
    }
    state.t = clampMoment(state.t === null ? spanEnd() : state.t);
    showControls();
    setupSlider();
    drawDensity();
    await draw();
  }

  window.scopeMap = { get cy() { return cy; }, state, moveTo };
  document.addEventListener("DOMContentLoaded", start);
})();
