// Live map and command console. One WebSocket: a full snapshot first, then every change.
// Zones coloured by load, grey hatched "无数据" when unknown; panels for recommendations,
// plan levels, alarms, the zone timeline and the decision log. Commands go to /api/commands
// and only the roles allowed to send them see their buttons (the server checks again).
(function () {
  "use strict";
  let lang = localStorage.getItem("crowdflow.lang") || "zh";
  const T = (k, vars) => {
    let s = (window.I18N[lang] || window.I18N.zh)[k];
    if (s == null) s = k;
    if (vars) for (const [n, v] of Object.entries(vars)) s = s.split(`{${n}}`).join(v);
    return s;
  };
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const $ = (sel) => document.querySelector(sel);
  const BANDS = [  // capacity ratio → colour (plan levels IV blue → I red; LB/T 068-2017)
    [0.95, "#d7191c", "≥95%"], [0.90, "#f07c19", "90–95%"], [0.80, "#f2c418", "80–90%"],
    [0.60, "#2b83ba", "60–80%"], [0.0, "#3aa357", "<60%"],
  ];
  const UNKNOWN_FILL = "url(#cf-hatch)";
  const CAM = { ok: "#1f9d55", offline: "#d7191c", moved: "#f07c19", unknown: "#9aa0a6" };
  // Levels, roles, health states and command kinds come from /api/site's `vocab`
  // (crowdflow/vocab.py): declared once on the server, never copied here.
  const V = () => (S.site && S.site.vocab) || { roles: [], levels: [], command_role: {}, health_states: [] };
  const colour = (s) => {
    if (!s || s.status !== "ok" || s.capacity_ratio == null) return UNKNOWN_FILL;
    for (const [t, c] of BANDS) if (s.capacity_ratio >= t) return c;
    return BANDS[BANDS.length - 1][1];
  };

  // ---------------------------------------------------------------- state
  const S = {
    me: null, site: null, states: {}, plans: {}, recs: {}, alarms: {}, mode: null, inforce: null, orders: {},
    holds: {},       // holding area id → HoldState as the server shows it (stale → unknown)
    holdResults: {}, // holding area id → {ok, text}: the answer to this page's last report there
    names: {}, // "zone:id" / "post:id" / ... → {zh, en}
    feats: {}, // "kind:id" → GeoJSON feature
  };
  const layers = {};      // zone id → Leaflet polygon
  const cams = {};        // camera id → circle marker
  const posts = {};       // post id → marker
  const holdMarks = {};   // holding area id → marker at its gate
  window.crowdflow = { states: S.states, layers, S };  // for tests, screenshots and debugging
  const can = (role) => !!S.me && V().roles.indexOf(S.me.role) >= V().roles.indexOf(role) && V().roles.indexOf(role) >= 0;
  const canCmd = (kind) => can(V().command_role[kind]);
  const nm = (kind, id) => (S.names[`${kind}:${id}`] || {})[lang] || id;
  const planName = (id) => { const p = (S.site.plans || []).find((x) => x.id === id); return p ? p.name[lang] : id; };

  function age(t) {
    if (t == null) return "";
    const s = Math.max(0, Date.now() / 1000 - t);
    return s < 120 ? `${Math.round(s)} ${T("seconds")}${T("ago")}` : `${Math.round(s / 60)} ${T("minutes")}${T("ago")}`;
  }
  const clock = (t) => new Date(t * 1000).toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const levelBadge = (lv) => `<span class="level lv-${lv || "none"}">${esc(T(lv ? `level_${lv}` : "level_none"))}</span>`;
  function actionText(a) {
    switch (a.type) {
      case "staffing": return T("act_staffing", { post: nm("post", a.post), n: a.headcount });
      case "traffic_cutoff": return T("act_traffic_cutoff", { road: nm("road", a.road) });
      case "one_way": return T("act_one_way", { zone: nm("zone", a.zone), toward: nm("zone", a.toward) });
      case "exit_only": return T("act_exit_only", { gate: nm("gate", a.gate) });
      case "metro_limit": return a.divert
        ? T("act_metro_divert", { gate: nm("gate", a.gate), n: a.max_per_min, via: a.divert.via ? a.divert.via[lang] : nm("zone", a.divert.zone), m: a.divert.extra_min })
        : T("act_metro_limit", { gate: nm("gate", a.gate), n: a.max_per_min });
      case "metro_inbound": return T("act_metro_inbound", { gate: nm("gate", a.gate), n: a.per_min });
      case "broadcast": return T("act_broadcast", { text: a.text[lang] });
      default: return a.type;
    }
  }
  function toast(text) {
    const el = $("#toast");
    el.textContent = text;
    el.classList.add("show");
    clearTimeout(toast.t);
    toast.t = setTimeout(() => el.classList.remove("show"), 4000);
  }

  // ---------------------------------------------------------------- map
  let map = null;
  let actionLayer = null;
  function trendArrow(s) {
    if (s.trend_pm == null) return "";
    return s.trend_pm > 2 ? " ↑" : s.trend_pm < -2 ? " ↓" : " →";
  }
  function label(id) {
    const s = S.states[id];
    const n = nm("zone", id);
    if (!s || s.status !== "ok") {
      const last = s && s.last_known ? ` (${Math.round(s.last_known.count)}${T("people")} · ${age(s.last_known.at)})` : "";
      return `${esc(n)}<br>${T("unknown")}${last}`;
    }
    const approx = (s.estimated_share || 0) > 0.5 ? "≈" : "";
    return `${esc(n)}<br>${approx}${Math.round(s.count)}${T("people")} · ${Math.round(s.capacity_ratio * 100)}% · ${s.density.toFixed(2)}/m²${trendArrow(s)}`;
  }
  function paint(id) {
    const layer = layers[id];
    if (!layer) return;
    const s = S.states[id];
    const unknown = !s || s.status !== "ok";
    // Mostly estimated (parts no camera sees now): paler fill, dotted outline, "≈" on the label.
    const estimated = !unknown && (s.estimated_share || 0) > 0.5;
    layer.setStyle({ fillColor: colour(s), fillOpacity: unknown ? 0.75 : estimated ? 0.4 : 0.65,
                     color: unknown ? "#666" : "#222", weight: 1, dashArray: unknown ? "4 4" : estimated ? "1 3" : null });
    const el = layer.getElement && layer.getElement();
    if (el) el.setAttribute("data-estimated", estimated ? "yes" : "no");
    if (el) el.setAttribute("data-status", unknown ? "unknown" : "ok");
    layer.setTooltipContent(label(id));
    const tip = layer.getTooltip().getElement && layer.getTooltip().getElement();
    if (tip) {
      tip.classList.toggle("unknown", unknown);
      tip.classList.toggle("live", !unknown);
      // Zoomed out, calm zones (< 60 %) drop their labels so the busy ones read at a glance.
      tip.classList.toggle("calm", !unknown && (s.capacity_ratio == null || s.capacity_ratio < 0.6));
    }
    scheduleDeclutter();
    if (S.panelZone === id) renderZoneFacts(id);
  }
  let declutterPending = false;
  function scheduleDeclutter() {
    if (declutterPending) return;
    declutterPending = true;
    requestAnimationFrame(() => { declutterPending = false; declutter(); });
  }
  function cameraHealth(id) {
    for (const a of Object.values(S.alarms)) {
      if (a.camera_id === id && a.cleared_at == null) {
        if (a.kind === "camera_offline") return "offline";
        if (a.kind === "view_moved") return "moved";
      }
    }
    // Structured health from the zone states (ZoneState.cameras), never parsed out of text.
    const MAP = { ok: "ok", camera_offline: "offline", frozen: "offline", view_moved: "moved",
                  view_unverified: "moved", degraded: "moved" };
    let h = "unknown";
    for (const s of Object.values(S.states)) {
      for (const c of s.cameras || []) {
        if (c.camera_id !== id) continue;
        if (c.used) return "ok";
        const m = MAP[c.state];
        if (m === "offline" || (m === "moved" && h !== "offline")) h = m;
      }
    }
    return h;
  }
  function paintCameras() {
    window.crowdflow.cameraPaints = (window.crowdflow.cameraPaints || 0) + 1;  // counted for tests
    for (const [id, m] of Object.entries(cams)) {
      const h = cameraHealth(id);
      m.setStyle({ color: "#fff", weight: 1.5, fillColor: CAM[h], fillOpacity: 1 });
      m.setTooltipContent(`${T("camera")}: ${esc(nm("camera", id))} · ${T(`cam_${h}`)}`);
      const el = m.getElement && m.getElement();
      if (el) el.setAttribute("data-health", h);
    }
  }
  // What is in force comes from control's one published record (InForce), never derived here.
  function activeActions() {
    return ((S.inforce || {}).measures || []).map((m) => [m.plan_id, m.action, m]);
  }
  function sourceText(m) {
    if (m.source === "emergency") return T("src_emergency");
    const lv = m.level ? T(`level_${m.level}`) : "";
    return m.source === "override" ? `${planName(m.plan_id)} ${lv} · ${T("src_override")}` : `${planName(m.plan_id)} ${lv}`;
  }
  function renderInForce() {
    const ms = (S.inforce || {}).measures || [];
    // ordered but its officers still on their way or setting it up: says when it acts
    const pending = (m) => m.acts_at && m.acts_at > Date.now() / 1000;
    $("#inforce .body").innerHTML = ms.length ? `<ul class="inforce">${ms.map((m) => `
      <li class="measure src-${m.source}${pending(m) ? " setting-up" : ""}" data-type="${esc(m.action.type)}">${esc(actionText(m.action))}
        <div class="muted">${esc(sourceText(m))} · ${T("since")} ${clock(m.since)} · ${esc(m.by)}</div>
        ${pending(m) ? `<div class="acts-at">${T("setting_up")} · ${T("acts_at")} ${clock(m.acts_at)}</div>` : ""}</li>`).join("")}</ul>`
      : `<p class="muted">${T("no_measures_in_force")}</p>`;
  }
  function centroid(kind, id) {
    const f = S.feats[`${kind}:${id}`];
    if (!f) return null;
    const ring = f.geometry.coordinates[0].slice(0, -1);
    const lat = ring.reduce((a, p) => a + p[1], 0) / ring.length;
    const lon = ring.reduce((a, p) => a + p[0], 0) / ring.length;
    return [lat, lon];
  }
  function paintActions() {
    if (!map) return;
    actionLayer.clearLayers();
    const staffing = {};
    for (const [, a] of activeActions()) {
      if (a.type === "traffic_cutoff") {
        const f = S.feats[`road:${a.road}`];
        if (f) L.polyline(f.geometry.coordinates.map(([lon, lat]) => [lat, lon]),
          { color: "#e0201b", weight: 5, dashArray: "10 8", className: `cutoff cutoff-${a.road}`, pane: "actions" })
          .bindTooltip(`${esc(nm("road", a.road))} · ${T("cutoff")}`).addTo(actionLayer);
      } else if (a.type === "one_way") {
        const from = centroid("zone", a.zone), to = centroid("zone", a.toward);
        if (from && to) {
          L.polyline([from, to], { color: "#0a6b2f", weight: 3, className: `oneway oneway-${a.zone}`, pane: "actions" })
            .bindTooltip(actionText(a)).addTo(actionLayer);
          const ang = Math.atan2(to[0] - from[0], (to[1] - from[1]) * Math.cos(from[0] * Math.PI / 180)) * 180 / Math.PI;
          const mid = [(from[0] * 0.35 + to[0] * 0.65), (from[1] * 0.35 + to[1] * 0.65)];
          L.marker(mid, { pane: "actions", interactive: false, icon: L.divIcon({ className: "oneway-arrow",
            html: `<span style="display:inline-block;transform:rotate(${-ang}deg)">➤</span>` }) }).addTo(actionLayer);
        }
      } else if (a.type === "exit_only" || a.type === "metro_limit") {
        const f = S.feats[`gate:${a.gate}`];
        if (f) L.polyline(f.geometry.coordinates.map(([lon, lat]) => [lat, lon]),
          { color: a.type === "exit_only" ? "#e0201b" : "#f07c19", weight: 7, className: `gate-action gate-${a.gate}`, pane: "actions" })
          .bindTooltip(actionText(a), { permanent: true, direction: "top", className: "zone-label" }).addTo(actionLayer);
      } else if (a.type === "staffing") {
        staffing[a.post] = Math.max(staffing[a.post] || 0, a.headcount);
      }
    }
    for (const [id, m] of Object.entries(posts)) {
      const f = S.feats[`post:${id}`];
      const base = f.properties.headcount;
      const n = staffing[id];
      const raised = n != null && n !== base;
      m.setIcon(L.divIcon({ className: `post-marker post-${id}${raised ? " raised" : ""}`,
        html: `${esc(f.properties.department)} ${raised ? `${base}→${n}` : base}` }));
      m.setTooltipContent(`${T("post")}: ${esc(nm("post", id))}`);
    }
  }
  function legend() {
    const open = $("#legend details") ? $("#legend details").open : !document.body.classList.contains("layout-phone");
    $("#legend").innerHTML = `<details ${open ? "open" : ""}><summary><b>${T("legend")}</b></summary>${T("legend_load")}<br>` +
      BANDS.map(([, c, txt]) => `<i style="background:${c}"></i>${txt}`).join("<br>") +
      `<br><i class="hatch"></i>${T("legend_unknown")}<br><i class="est"></i>${T("legend_estimated")}` +
      ["ok", "offline", "moved", "unknown"].map((h) => `<br><i class="dot" style="background:${CAM[h]}"></i>${T(`legend_cam_${h}`)}`).join("") +
      `<br><i class="cut"></i>${T("legend_cutoff")}<br><span style="color:#0a6b2f;font-weight:900">➤</span> ${T("legend_oneway")}` +
      `<br><i style="background:#0b3d91"></i>${T("legend_post")}</details>`;
  }
  function addHatch() {
    const svg = map.getPanes().overlayPane.querySelector("svg");
    if (!svg || svg.querySelector("#cf-hatch")) return;
    const defs = document.createElementNS("http://www.w3.org/2000/svg", "defs");
    defs.innerHTML = '<pattern id="cf-hatch" patternUnits="userSpaceOnUse" width="8" height="8" patternTransform="rotate(45)">' +
      '<rect width="8" height="8" fill="#c4c8cc"/><line x1="0" y1="0" x2="0" y2="8" stroke="#7d848b" stroke-width="3"/></pattern>';
    svg.insertBefore(defs, svg.firstChild);
  }
  function buildMap(site) {
    map = L.map("map", { zoomControl: true, attributionControl: true, maxZoom: 20 });
    map.attributionControl.setPrefix(false);
    map.createPane("basemap").style.zIndex = 300;
    map.createPane("actions").style.zIndex = 450;
    if (site.tiles) L.tileLayer(site.tiles.url, { maxZoom: site.tiles.max_zoom, attribution: site.tiles.attribution }).addTo(map);
    actionLayer = L.layerGroup().addTo(map);
    const bounds = L.latLngBounds([]);
    const ll = (c) => c.map(([lon, lat]) => [lat, lon]);
    const BASE = { water: { color: "#8fb8d8", fillColor: "#a9cbe6", fillOpacity: 0.9, weight: 1 },
                   building: { color: "#b9a78f", fillColor: "#d9ccb8", fillOpacity: 0.9, weight: 1 },
                   bridge: { color: "#7d8790", fillColor: "#b8c0c7", fillOpacity: 0.9, weight: 1 } };
    for (const f of site.features) {
      const p = f.properties;
      S.feats[`${p.kind}:${p.id}`] = f;
      if (p.name) S.names[`${p.kind}:${p.id}`] = p.name;
      if (BASE[p.kind]) {
        L.polygon(ll(f.geometry.coordinates[0]), { ...BASE[p.kind], pane: "basemap", className: `base base-${p.kind}` })
          .bindTooltip(() => (p.name ? p.name[lang] : p.id)).addTo(map);
      } else if (p.kind === "zone") {
        const latlngs = ll(f.geometry.coordinates[0]);
        const poly = L.polygon(latlngs, { className: `zone zone-${p.id}` }).addTo(map);
        poly.bindTooltip("", { permanent: true, direction: "center", className: "zone-label" });
        poly.on("mouseover", () => { const el = poly.getTooltip().getElement(); if (el) el.classList.add("hover"); });
        poly.on("mouseout", () => { const el = poly.getTooltip().getElement(); if (el) el.classList.remove("hover"); });
        poly.on("click", () => {
          showTimeline(p.id);
          if (layout === "phone") $("#timeline").scrollIntoView({ behavior: "smooth", block: "start" });
        });
        layers[p.id] = poly;
        latlngs.forEach((x) => bounds.extend(x));
      } else if (p.kind === "road") {
        L.polyline(ll(f.geometry.coordinates), { color: "#8a949e", weight: 6, opacity: 0.7, pane: "basemap", className: `road road-${p.id}` })
          .bindTooltip(() => p.name[lang]).addTo(map);
      } else if (p.kind === "camera") {
        const [lon, lat] = f.geometry.coordinates;
        cams[p.id] = L.circleMarker([lat, lon], { radius: 5, className: `camera camera-${p.id}` })
          .bindTooltip("").addTo(map);
      } else if (p.kind === "post") {
        const [lon, lat] = f.geometry.coordinates;
        posts[p.id] = L.marker([lat, lon], { icon: L.divIcon({ className: "post-marker" }) }).bindTooltip("").addTo(map);
      }
    }
    buildHoldMarks(site);
    addHatch();
    window.crowdflow.map = map;
    window.crowdflow.showTimeline = showTimeline;
    S.zoneBounds = bounds;
    map.fitBounds(bounds, { padding: [10, 10] });
    map.on("zoomend moveend", () => requestAnimationFrame(declutter));
    const DETAIL_ZOOM = 18;  // zoomed out, only busy live zones keep their labels
    const overview = () => map.getContainer().classList.toggle("overview", map.getZoom() < DETAIL_ZOOM);
    map.on("zoomend", overview);
    overview();
  }

  // The OSM basemap (streets, footways, steps, buildings, metro), served by /api/basemap from
  // the file the site names; drawn under everything, with its attribution on the map.
  async function loadBasemap() {
    const res = await fetch("/api/basemap");
    if (!res.ok) { window.crowdflow.basemap = { error: (await res.json().catch(() => ({}))).detail || res.status }; return; }
    const bm = await res.json();
    const ll = (c) => c.map(([lon, lat]) => [lat, lon]);
    const pane = "osm";
    if (!map.getPane(pane)) map.createPane(pane).style.zIndex = 250;
    const g = L.layerGroup();
    let n = 0;
    const STREET = { primary: 6, primary_link: 4, secondary: 5, secondary_link: 4, tertiary: 4, residential: 3 };
    for (const f of bm.features) {
      const p = f.properties, t = f.geometry.type, layer = p._layer;
      const name = p[lang === "en" && p["name:en"] ? "name:en" : "name"];
      const lines = t === "LineString" ? [f.geometry.coordinates] : t === "MultiLineString" ? f.geometry.coordinates : null;
      if (layer === "building" && (t === "Polygon" || t === "MultiPolygon")) {
        const polys = t === "Polygon" ? [f.geometry.coordinates] : f.geometry.coordinates;
        for (const poly of polys) L.polygon(poly.map(ll), { pane, color: "#c9b99f", weight: 0.6, fillColor: "#e4d9c6", fillOpacity: 0.85, className: "osm osm-building", interactive: false }).addTo(g);
        n++;
      } else if ((layer === "street" || layer === "footway") && lines) {
        const steps = p.highway === "steps";
        const style = layer === "street"
          ? { color: "#ffffff", weight: STREET[p.highway] || 2.5, opacity: 0.95, className: "osm osm-street" }
          : steps ? { color: "#a0522d", weight: 2.5, dashArray: "2 3", opacity: 0.9, className: "osm osm-steps" }
            : { color: "#7c8b99", weight: 1.5, dashArray: "4 3", opacity: 0.9, className: "osm osm-footway" };
        for (const c of lines) {
          const pl = L.polyline(ll(c), { pane, ...style });
          if (name) pl.bindTooltip(esc(name), { sticky: true });
          pl.addTo(g);
        }
        n++;
      } else if ((layer === "metro_entrance" || layer === "metro_station") && t === "Point") {
        const [lon, lat] = f.geometry.coordinates;
        const txt = layer === "metro_entrance" ? `M${p.ref ? esc(p.ref) : ""}` : "M";
        L.marker([lat, lon], { pane, interactive: !!name, icon: L.divIcon({ className: `osm-metro osm-${layer}`, html: txt }) })
          .bindTooltip(esc(name || T("metro_exit"))).addTo(g);
        n++;
      }
    }
    g.addTo(map);
    map.attributionControl.addAttribution(esc(bm.attribution));
    window.crowdflow.basemap = { features: n };
  }

  // Labels never overlap: the busiest zones are placed first; a label that would cover one
  // already placed is hidden and shown on hover (its zone's tooltip) instead.
  function declutter() {
    if (!map) return;
    const items = Object.entries(layers).map(([id, layer]) => {
      const tip = layer.getTooltip() && layer.getTooltip().getElement();
      const s = S.states[id];
      const prio = !s || s.status !== "ok" ? -1 : (s.capacity_ratio || 0);
      return { id, tip, prio };
    }).filter((x) => x.tip);
    items.sort((a, b) => b.prio - a.prio || a.id.localeCompare(b.id));
    const placed = [];
    for (const it of items) {
      it.tip.classList.remove("collide");
      const style = getComputedStyle(it.tip);
      if (style.display === "none") continue;
      const r = it.tip.getBoundingClientRect();
      if (!r.width) continue;
      const hit = placed.some((q) => r.left < q.right && r.right > q.left && r.top < q.bottom && r.bottom > q.top);
      if (hit) it.tip.classList.add("collide");
      else placed.push(r);
    }
  }
  function fitZones() {
    if (!map || !S.zoneBounds) return;
    map.invalidateSize();
    map.fitBounds(S.zoneBounds, { padding: [10, 10] });
  }

  // ---------------------------------------------------------------- panels
  function newId() {  // crypto.randomUUID needs a secure context; getRandomValues does not
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }
  // One command = one id, made here with the time it was issued. A request that fails on
  // the way (network, or control slow to answer) is sent again with the same id: control
  // acts once and answers both. Control refuses, with the reason, a command that reaches it
  // later than command_max_age_s after issued_at.
  async function command(body) {
    const cmd = { ...body, id: newId(), issued_at: Date.now() / 1000 };
    let res, data = {};
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        res = await fetch("/api/commands", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(cmd) });
        data = await res.json().catch(() => ({}));
        if (res.status !== 504) break;
      } catch (e) {
        res = null; data = { error: String(e) };
      }
    }
    const error = data.error || (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail || "")) || (res ? res.statusText : "");
    window.crowdflow.lastCommand = { id: cmd.id, kind: cmd.kind, status: res ? res.status : 0, error: res && res.ok ? null : error };
    if (res && res.ok) toast(T("cmd_ok"));
    else if (!res || res.status === 504) toast(T("cmd_timeout", { error }));
    else if (res.status === 403 || res.status === 401) toast(T("cmd_forbidden", { error }));
    else toast(T("cmd_failed", { error }));
    return { ok: !!(res && res.ok), status: res ? res.status : 0, error: res && res.ok ? null : error };
  }
  // A modal that says what a command will do, and asks for a note (required or not).
  function ask({ title, body, noteLabel, noteRequired, ok }) {
    const dlg = $("#dlg");
    $("#dlg-title").textContent = title;
    $("#dlg-body").innerHTML = body || "";
    $("#dlg-note-wrap").hidden = !noteLabel;
    $("#dlg-note-label").textContent = noteLabel || "";
    $("#dlg-note").value = "";
    $("#dlg-error").textContent = "";
    $("#dlg-ok").textContent = ok || T("ok");
    const okBtn = $("#dlg-ok");
    const sync = () => { okBtn.disabled = !!noteRequired && !$("#dlg-note").value.trim(); };
    $("#dlg-note").oninput = sync;
    sync();
    return new Promise((resolve) => {
      dlg.onclose = () => resolve(dlg.returnValue === "ok" ? { note: $("#dlg-note").value.trim() } : null);
      $("#dlg-cancel").onclick = () => dlg.close("cancel");
      dlg.returnValue = "";
      dlg.showModal();
      if (noteLabel) $("#dlg-note").focus();
    });
  }
  async function override(planId, level) {
    const p = S.plans[planId] || {};
    const acts = areaActions(planId, level);
    const r = await ask({
      title: T("override_title", { plan: planName(planId) }),
      body: `<p>${levelBadge(p.level)} → ${levelBadge(level)}</p>` +
        (acts.length ? `<div class="muted">${T("will_be_in_force")}</div><ul>${acts.map((a) => `<li>${esc(actionText(a))}</li>`).join("")}</ul>` : `<p class="muted">${T("no_measures")}</p>`),
      noteLabel: T("override_note"), noteRequired: true, ok: T("override"),
    });
    if (r) command({ kind: "override", plan_id: planId, level: level || null, note: r.note });
  }
  async function switchMode(next) {
    const acts = next === "emergency" ? ((S.site.emergency || {}).actions || []) : [];
    const lv = V().levels[V().levels.length - 1];
    const body = next === "emergency"
      ? `<p>${T("mode_emergency_does", { level: T(`level_${lv}`) })}</p><ul class="mode-actions">${acts.map((a) => `<li>${esc(actionText(a))}</li>`).join("")}</ul><p class="muted">${T("mode_pending_superseded")}</p>`
      : `<p>${T("mode_normal_does")}</p><ul class="mode-actions">${(S.site.plans || []).map((sp) => {
          const before = [...((S.plans[sp.id] || {}).history || [])].reverse().find((h) => h.via !== "emergency" && h.via !== "release");
          return `<li>${esc(sp.name[lang])} → ${levelBadge(before ? before.level : null)}</li>`; }).join("")}</ul>`;
    const r = await ask({ title: T(`to_${next}`), body, noteLabel: T("mode_note"), noteRequired: false, ok: T(`to_${next}`) });
    if (r) command({ kind: "set_mode", mode: next, note: r.note || null });
  }
  function areaActions(planId, level) {  // what a plan's level keeps in force (cumulative)
    const sp = (S.site.plans || []).find((x) => x.id === planId);
    if (!sp || !sp.actions || !level) return [];
    const rank = (l) => V().levels.indexOf(l);
    return Object.entries(sp.actions).filter(([l]) => rank(l) <= rank(level)).flatMap(([, a]) => a);
  }
  function recCard(r) {
    return `
      <div class="card rec ${r.status}" data-rec="${esc(r.id)}">
        <b>${esc(planName(r.plan_id))}</b> ${levelBadge(r.from_level)} → ${levelBadge(r.level)}
        ${r.predictive ? `<span class="muted">(${T("predictive")})</span>` : ""}
        <span class="muted">${T(`status_${r.status}`)}${r.decided_by ? ` · ${esc(r.decided_by)}` : ""} · ${clock(r.decided_at || r.created_at)}</span>
        <ul class="reasons">${r.reasons.map((x) => `<li>${esc(x.text[lang])}</li>`).join("")}</ul>
        ${r.status === "pending" ? `<ul class="actions">${r.actions.map((a) => `<li>${esc(actionText(a))}</li>`).join("")}</ul>` : ""}
        ${r.status === "pending" && canCmd("confirm") ? `<div class="btns">
          <button class="cmd-confirm" data-id="${esc(r.id)}">${T("confirm")}</button>
          <button class="cmd-reject" data-id="${esc(r.id)}">${T("reject")}</button></div>` : ""}
      </div>`;
  }
  // Pending first, then decisions; superseded and expired recommendations fold away.
  function renderRecs() {
    const all = Object.values(S.recs).sort((a, b) => (a.status === "pending" ? 0 : 1) - (b.status === "pending" ? 0 : 1) || b.created_at - a.created_at);
    const gone = (r) => r.status === "superseded" || r.status === "expired";
    const shown = all.filter((r) => !gone(r)).slice(0, 8);
    const folded = all.filter(gone).slice(0, 30);
    const wasOpen = $("#recs details.folded") && $("#recs details.folded").open;
    $("#recs .body").innerHTML = (shown.length ? shown.map(recCard).join("") : `<p class="muted">${T("no_recs")}</p>`) +
      (folded.length ? `<details class="folded" ${wasOpen ? "open" : ""}><summary class="muted">${T("folded_recs", { n: folded.length })}</summary>${folded.map(recCard).join("")}</details>` : "");
  }
  function renderPlans() {
    const plans = S.site.plans || [];
    $("#plans .body").innerHTML = plans.map((sp) => {
      const p = S.plans[sp.id] || { level: null, active_actions: [], history: [], auto: false };
      const hist = (p.history || []).slice(-5).reverse();
      return `<div class="card plan" data-plan="${esc(sp.id)}">
        <b>${esc(sp.name[lang])}</b> <span class="plan-level">${levelBadge(p.level)}</span>
        <span class="muted">${p.since ? `${T("since")} ${clock(p.since)}` : ""} · <span class="plan-auto" data-auto="${p.auto}">${T(p.auto ? "auto" : "manual")}</span>${p.pending ? ` · ${T("pending")}` : ""}</span>
        ${p.engine ? `<div class="plan-engine plan-engine-${esc(p.engine)}" data-engine="${esc(p.engine)}">${esc(T(`engine_${p.engine}`))}</div>` : ""}
        ${p.active_actions.length ? `<div class="muted">${T("active_actions")}</div><ul class="active-actions">${p.active_actions.map((a) => `<li>${esc(actionText(a))}</li>`).join("")}</ul>` : ""}
        ${hist.length ? `<div class="muted">${T("history")}</div><ul class="history">${hist.map((h) => `<li>${clock(h.at)} ${levelBadge(h.level)} ${esc(h.by)} · ${T(`via_${h.via}`)}</li>`).join("")}</ul>` : ""}
        ${canCmd("override") ? `<div class="btns"><select class="override-level">${["", ...V().levels].map((lv) => `<option value="${lv}" ${lv === (p.level || "") ? "selected" : ""}>${T(lv ? `level_${lv}` : "level_none")}</option>`).join("")}</select>
          <button class="cmd-override" data-plan="${esc(sp.id)}">${T("override")}</button></div>` : ""}
        ${canCmd("set_auto") ? `<div class="btns"><button class="cmd-auto ${p.auto ? "on" : ""}" data-plan="${esc(sp.id)}" data-auto="${p.auto ? "false" : "true"}" aria-pressed="${p.auto}">${T(p.auto ? "auto_on" : "auto_off")}</button></div>` : ""}
      </div>`;
    }).join("");
  }
  function renderMode() {
    const m = S.mode;
    const el = $("#mode");
    el.textContent = m ? T(`mode_${m.mode}`) : T("mode_unknown");
    el.className = `mode ${m ? m.mode : ""}`;
    const next = m && m.mode === "emergency" ? "normal" : "emergency";
    $("#mode-cmd").innerHTML = canCmd("set_mode") ? `<button class="cmd-mode to-${next}" data-mode="${next}">${T(`to_${next}`)}</button>` : "";
  }
  function renderAlarms() {
    const list = Object.values(S.alarms).sort((a, b) => (a.cleared_at ? 1 : 0) - (b.cleared_at ? 1 : 0) || b.raised_at - a.raised_at).slice(0, 30);
    $("#alarms .body").innerHTML = list.length ? list.map((a) => `
      <div class="card alarm ${a.severity} ${a.cleared_at ? "cleared" : ""}" data-alarm="${esc(a.id)}">
        <b>${T(`severity_${a.severity}`)}</b> ${esc(a.text[lang])}
        <div class="muted">${clock(a.raised_at)}${a.cleared_at ? ` · ${T("cleared")}` : ""}${a.acked_by ? ` · ${T("acked")}: ${esc(a.acked_by)}` : ""}</div>
        ${!a.acked_by && !a.cleared_at && canCmd("ack_alarm") ? `<div class="btns"><button class="cmd-ack" data-id="${esc(a.id)}">${T("ack")}</button></div>` : ""}
      </div>`).join("") : `<p class="muted">${T("no_alarms")}</p>`;
  }
  function myPost() { return (S.me && S.me.post) || localStorage.getItem("crowdflow.post") || ""; }
  function renderMyPost() {
    const el = $("#mypost");
    const id = myPost();
    el.classList.toggle("nopost", !id);
    const options = Object.keys(posts).map((p) => `<option value="${esc(p)}" ${p === id ? "selected" : ""}>${esc(nm("post", p))}</option>`).join("");
    let html = `<select id="post-select"><option value="">${T("choose_post")}</option>${options}</select>`;
    if (id && S.feats[`post:${id}`]) {
      html += myOrders(id);
      const f = S.feats[`post:${id}`];
      const lines = [];
      for (const [, a, m] of activeActions()) {
        if ((m.posts || []).includes(id) || a.type === "broadcast") lines.push(`${m.level ? levelBadge(m.level) : `<span class="level lv-I">${T("src_emergency")}</span>`} ${esc(actionText(a))}`);
      }
      for (const [, a, m] of activeActions()) if (!(m.posts || []).includes(id) && a.type !== "broadcast") lines.push(esc(actionText(a)));
      html += `<div><b>${esc(nm("post", id))}</b> · ${esc(f.properties.department)} · ${f.properties.headcount}${T("people")}</div>
        <div class="muted">${T("post_instructions")}</div>
        <ul class="instructions">${lines.length ? lines.map((l) => `<li>${l}</li>`).join("") : `<li>${T("no_instructions")}</li>`}</ul>`;
    }
    el.querySelector(".body").innerHTML = html;
  }
  function renderZoneFacts(id) {
    const el = $("#timeline .facts");
    if (!el) return;
    const s = S.states[id] || {};
    const zoneF = S.feats[`zone:${id}`];
    const planIds = (S.site.plans || []).filter((p) => p.zones.includes(id)).map((p) => p.id);
    const measures = ((S.inforce || {}).measures || []).filter((m) => (m.plan_id && planIds.includes(m.plan_id)) || m.source === "emergency" || m.action.zone === id);
    const rows = s.status === "ok"
      ? [[T("people"), `${Math.round(s.count)}${s.count_std != null ? ` ± ${Math.round(s.count_std)}` : ""}`],
         [T("density"), `${s.density.toFixed(2)} /m²`], [T("ratio"), `${Math.round(s.capacity_ratio * 100)}%`],
         [T("los"), `<span class="los los-${esc(s.los)}">${esc(s.los || "—")}</span> · ${s.flow_ppm != null ? `${s.flow_ppm.toFixed(0)} ${T("ppm")}${s.flow_measured ? ` (${T("flow_gates")})` : ""}` : ""}`],
         [T("trend"), s.trend_pm == null ? "—" : `${s.trend_pm > 0 ? "+" : ""}${s.trend_pm.toFixed(1)} ${T("per_min")}${trendArrow(s)}`],
         [T("coverage"), `${Math.round((s.coverage || 0) * 100)}%${s.estimated_share ? ` · ${T("estimated")} ${Math.round(s.estimated_share * 100)}%` : ""} · ${T("confidence")} ${Math.round((s.confidence || 0) * 100)}%`]]
      : [[T("unknown"), `${esc(s.reason || "")}${s.last_known ? ` · ${Math.round(s.last_known.count)}${T("people")} · ${age(s.last_known.at)}` : ""}`]];
    rows.push([T("capacity"), `${s.capacity != null ? s.capacity : (zoneF ? zoneF.properties.capacity : "")}`]);
    const cams = (s.cameras || []).map((c) => `<li class="cam cam-${esc(c.state)}" data-camera="${esc(c.camera_id)}">${esc(nm("camera", c.camera_id))} · ${T(`camstate_${c.state}`)}${c.used ? " ✓" : ""}</li>`).join("");
    el.innerHTML = `<table class="zone-facts">${rows.map(([k, v]) => `<tr><td>${esc(k)}</td><td>${v}</td></tr>`).join("")}</table>
      <div class="muted">${T("cameras")}</div><ul class="zone-cams">${cams || `<li>${T("no_camera")}</li>`}</ul>
      <div class="muted">${T("in_force")}</div><ul class="zone-measures">${measures.length ? measures.map((m) => `<li>${esc(actionText(m.action))} <span class="muted">· ${esc(sourceText(m))}</span></li>`).join("") : `<li>${T("no_measures_in_force")}</li>`}</ul>`;
  }
  // ---------------------------------------------------------------- orders to posts
  const mmss = (s) => s == null ? "—" : `${Math.floor(s / 60)}:${String(Math.round(s % 60)).padStart(2, "0")}`;
  function orderStatus(o) { return `<span class="ostatus ostatus-${esc(o.status)}">${T(`order_${o.status}`)}</span>`; }
  function myOrders(post) {
    const mine = Object.values(S.orders).filter((o) => o.post === post).sort((a, b) => b.issued_at - a.issued_at);
    const open = mine.filter((o) => o.status === "sent" || o.status === "acknowledged");
    const done = mine.filter((o) => !(o.status === "sent" || o.status === "acknowledged")).slice(0, 5);
    const card = (o) => `<div class="order-card ostatus-${esc(o.status)}" data-order="${esc(o.id)}">
        <div class="order-what">${esc(actionText(o.action))}</div>
        <div class="muted">${esc(o.issued_by)} · ${clock(o.issued_at)} · ${orderStatus(o)}</div>
        ${(o.status === "sent" || o.status === "acknowledged") && canCmd("answer_order") ? `<div class="btns">
          ${o.status === "sent" ? `<button class="ord-ack" data-id="${esc(o.id)}">${T("order_ack")}</button>` : ""}
          <button class="ord-inplace" data-id="${esc(o.id)}">${T("order_inplace")}</button>
          <button class="ord-cannot" data-id="${esc(o.id)}">${T("order_cannot")}</button></div>` : ""}
      </div>`;
    return (open.length ? `<div class="orders-open"><div class="order-head">${T("orders_for_you", { n: open.length })}</div>${open.map(card).join("")}</div>` : "") +
      (done.length ? `<details class="orders-done"><summary class="muted">${T("orders_done", { n: done.length })}</summary>${done.map(card).join("")}</details>` : "");
  }
  function renderOrders() {
    const list = Object.values(S.orders).sort((a, b) => b.issued_at - a.issued_at).slice(0, 40);
    const sum = (S.orderSummary || [])[0];
    $("#orders .body").innerHTML = (sum ? `<div class="order-summary muted">${T("orders_summary", { day: sum.evening, n: sum.orders, placed: sum.in_place, med: mmss(sum.in_place_median_s), p90: mmss(sum.in_place_p90_s) })}</div>` : "") +
      (list.length ? `<table class="orders"><tr><th>${T("post")}</th><th>${T("order_what")}</th><th>${T("order_state")}</th><th>${T("order_ack_by")}</th><th>${T("order_time")}</th></tr>${list.map((o) => `
        <tr class="order-row ostatus-${esc(o.status)}" data-order="${esc(o.id)}" data-post="${esc(o.post)}">
          <td>${esc(nm("post", o.post))}</td><td>${esc(actionText(o.action))}</td><td>${orderStatus(o)}${o.status === "cannot" ? `<div class="muted">${esc((o.answers[o.answers.length - 1] || {}).note || "")}</div>` : ""}</td>
          <td class="ack">${o.acknowledged_by ? `${esc(o.acknowledged_by)} · ${clock(o.acknowledged_at)}` : "—"}</td>
          <td class="inplace">${mmss(o.in_place_s)}</td></tr>`).join("")}</table>` : `<p class="muted">${T("no_orders")}</p>`);
  }
  let summaryTimer = null;
  const summarySoon = () => { clearTimeout(summaryTimer); summaryTimer = setTimeout(loadSummary, 300); };
  async function loadSummary() {
    const res = await fetch("/api/orders");
    if (!res.ok) return;
    S.orderSummary = (await res.json()).summary;
    renderOrders();
  }
  function alertOfficer() {  // a new order for this phone's post: a tone and a buzz, where the browser allows
    try {
      const ctx = alertOfficer.ctx || (alertOfficer.ctx = new (window.AudioContext || window.webkitAudioContext)());
      const o = ctx.createOscillator(), g = ctx.createGain();
      o.frequency.value = 880; g.gain.value = 0.2;
      o.connect(g); g.connect(ctx.destination); o.start(); o.stop(ctx.currentTime + 0.35);
    } catch (e) { /* no audio before a user gesture: the card still flashes */ }
    if (navigator.vibrate) navigator.vibrate([200, 100, 200]);
    window.crowdflow.alerts = (window.crowdflow.alerts || 0) + 1;
  }
  async function answerOrder(id, answer) {
    if (answer === "cannot") {
      const o = S.orders[id];
      const r = await ask({ title: T("order_cannot"), body: `<p>${esc(o ? actionText(o.action) : id)}</p>`,
                            noteLabel: T("order_cannot_why"), noteRequired: true, ok: T("order_cannot") });
      if (!r) return;
      command({ kind: "answer_order", order_id: id, answer, note: r.note });
    } else command({ kind: "answer_order", order_id: id, answer });
  }

  // ---------------------------------------------------------------- queues at holding areas
  // Counts reported by the staff at a pen or the metro operator (report_queue). A count too old,
  // or none yet, is "unknown" with the last count and its age: never shown as 0 or left empty.
  const HOLD_WARN = 2, HOLD_CRIT = 4;  // p/m²: dense, and critical (Fruin queueing levels E/F)
  const holdAreas = () => (S.site && S.site.holding_areas) || [];
  const holdName = (h) => (h.name || {})[lang] || h.id;
  const densClass = (d) => d == null ? "" : d >= HOLD_CRIT ? "dens-crit" : d >= HOLD_WARN ? "dens-warn" : "dens-ok";
  function holdFigure(st) {
    if (st && st.status === "ok" && st.people != null) {
      return { html: `<span class="hold-people-n">${Math.round(st.people)}${T("people")}</span> · <span class="hold-dens ${densClass(st.density)}">${st.density.toFixed(1)} ${T("per_m2")}</span>`,
               meta: T("hold_reported_by", { age: age(st.reported_at), by: esc(st.reported_by || "—") }), short: `${Math.round(st.people)}` };
    }
    const last = st && st.last_people != null ? T("hold_last", { n: Math.round(st.last_people), age: age(st.last_at) }) : T("hold_never");
    return { html: `<span class="hold-unknown">${T("hold_unknown")}</span>`, meta: esc(last), short: "?" };
  }
  function mineFirst(h) {  // the pens at the gates of this user's post first (an officer's own queue)
    const g = S.feats[`gate:${h.gate}`];
    return g && g.properties.post && g.properties.post === myPost() ? 0 : 1;
  }
  function renderHolds() {
    window.crowdflow.holdRenders = (window.crowdflow.holdRenders || 0) + 1;  // counted for tests
    const body = $("#holds .body");
    if (!body) return;
    // keep what the user is typing across repaints (pushes arrive while a count is entered)
    const typed = {};
    body.querySelectorAll("input.hold-input").forEach((i) => { typed[i.dataset.hold] = i.value; });
    const focused = document.activeElement && document.activeElement.classList.contains("hold-input") ? document.activeElement.dataset.hold : null;
    const mayReport = canCmd("report_queue");
    const list = holdAreas().slice().sort((a, b) => mineFirst(a) - mineFirst(b));
    body.innerHTML = list.length ? list.map((h) => {
      const st = S.holds[h.id];
      const f = holdFigure(st);
      const res = S.holdResults[h.id];
      const status = st && st.status === "ok" ? "ok" : "unknown";
      return `<div class="hold-row status-${status} ${st && st.status === "ok" ? densClass(st.density) : ""}" data-hold="${esc(h.id)}" data-status="${status}">
        <div class="hold-name"><b>${esc(holdName(h))}</b> <span class="muted">${esc(nm("gate", h.gate))} · ${h.area_m2} m²${h.queue === "departures" ? ` · ${T("hold_departures")}` : ""}</span></div>
        <div class="hold-figure">${f.html}</div>
        <div class="hold-meta muted">${f.meta}</div>
        ${mayReport ? `<form class="hold-form" data-hold="${esc(h.id)}">
          <input class="hold-input" data-hold="${esc(h.id)}" type="number" inputmode="numeric" min="0" step="1" placeholder="${T("hold_count_placeholder")}" aria-label="${esc(holdName(h))}">
          <button class="cmd-report" type="submit" data-hold="${esc(h.id)}">${T("hold_report")}</button></form>` : ""}
        ${res ? `<div class="hold-result ${res.ok ? "ok" : "refused"}" role="status">${esc(res.text)}</div>` : ""}
      </div>`;
    }).join("") : `<p class="muted">${T("no_holds")}</p>`;
    body.querySelectorAll("input.hold-input").forEach((i) => { if (typed[i.dataset.hold] != null) i.value = typed[i.dataset.hold]; });
    if (focused) { const i = body.querySelector(`input.hold-input[data-hold="${focused}"]`); if (i) i.focus(); }
    paintHoldMarks();
  }
  function buildHoldMarks(site) {
    const byGate = {};
    for (const h of site.holding_areas || []) {
      const g = S.feats[`gate:${h.gate}`];
      if (!g) continue;
      const [[lon1, lat1], [lon2, lat2]] = g.geometry.coordinates;
      const k = byGate[h.gate] = (byGate[h.gate] || 0) + 1;  // two pens at one gate: side by side
      holdMarks[h.id] = L.marker([(lat1 + lat2) / 2, (lon1 + lon2) / 2], { pane: "actions",
        icon: L.divIcon({ className: "hold-marker", iconAnchor: [k === 1 ? 0 : -34, 22] }) }).bindTooltip("").addTo(map);
    }
  }
  function paintHoldMarks() {
    for (const h of holdAreas()) {
      const m = holdMarks[h.id];
      if (!m) continue;
      const st = S.holds[h.id];
      const f = holdFigure(st);
      const cls = st && st.status === "ok" ? densClass(st.density) : "unknown";
      m.setIcon(L.divIcon({ className: `hold-marker hold-${h.id} ${cls}`, iconAnchor: m.options.icon.options.iconAnchor,
        html: `⧗ ${f.short}` }));
      m.setTooltipContent(`${esc(holdName(h))}<br>${f.html}<br>${f.meta}`);
    }
  }
  async function reportQueue(holdId, form) {
    const input = form.querySelector("input.hold-input");
    const raw = input.value.trim();
    const n = Number(raw);
    if (raw === "" || !Number.isInteger(n) || n < 0) {
      S.holdResults[holdId] = { ok: false, text: T("hold_need_count") };
      renderHolds();
      return;
    }
    const btn = form.querySelector("button");
    btn.disabled = true;
    const r = await command({ kind: "report_queue", hold_id: holdId, people: n });
    S.holdResults[holdId] = r.ok ? { ok: true, text: T("hold_sent", { n }) } : { ok: false, text: T("hold_refused", { error: r.error }) };
    // a push may have repainted the panel meanwhile: clear the count in the form shown now
    if (r.ok) document.querySelectorAll(`#holds input.hold-input[data-hold="${holdId}"]`).forEach((i) => { i.value = ""; });
    renderHolds();
  }

  async function showTimeline(id) {
    S.panelZone = id;
    const res = await fetch(`/api/zones/${encodeURIComponent(id)}/history`);
    if (!res.ok) return;
    const h = await res.json();
    const W = 440, H = 140, P = 24;
    const t0 = h.now - 120 * 60, t1 = h.now + 15 * 60;
    const pts = h.samples.filter((s) => s.capacity_ratio != null);
    const fc = h.forecast.map((f) => ({ t: h.now + f.horizon_min * 60, r: f.capacity_ratio }));
    const ymax = Math.max(1.2, ...pts.map((s) => s.capacity_ratio), ...fc.map((f) => f.r));
    const x = (t) => P + (W - 2 * P) * (t - t0) / (t1 - t0);
    const y = (r) => H - P + -(H - 2 * P) * r / ymax;
    const lines = [0.8, 0.9, 0.95].map((r) => `<line x1="${P}" x2="${W - P}" y1="${y(r)}" y2="${y(r)}" stroke="${r === 0.8 ? "#f2c418" : r === 0.9 ? "#f07c19" : "#d7191c"}" stroke-dasharray="3 3" stroke-width="1"/>`).join("");
    const path = pts.map((s) => `${x(s.t).toFixed(1)},${y(s.capacity_ratio).toFixed(1)}`).join(" ");
    const cur = h.current.status === "ok" ? [{ t: h.now, r: h.current.capacity_ratio }] : [];
    const fpath = cur.concat(fc).map((f) => `${x(f.t).toFixed(1)},${y(f.r).toFixed(1)}`).join(" ");
    const ticks = [-120, -60, 0, 15].map((m) => `<text x="${x(h.now + m * 60)}" y="${H - 6}" fill="#8d9aa7" font-size="10" text-anchor="middle">${m === 0 ? clock(h.now).slice(0, 5) : `${m > 0 ? "+" : ""}${m}′`}</text>`).join("");
    const last = h.current.status === "ok" ? `${Math.round(h.current.count)}${T("people")} · ${Math.round(h.current.capacity_ratio * 100)}%`
      : `${T("unknown")}${h.current.last_known ? ` (${Math.round(h.current.last_known.count)}${T("people")} · ${age(h.current.last_known.at)})` : ""}`;
    $("#timeline .body").innerHTML = `<div data-zone="${esc(id)}"><b>${esc(nm("zone", id))}</b> · ${last}</div><div class="facts"></div>
      <svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">${lines}
        <line x1="${x(h.now)}" x2="${x(h.now)}" y1="${P / 2}" y2="${H - P}" stroke="#4b5866"/>
        ${pts.length ? `<polyline class="samples" points="${path}" fill="none" stroke="#6ec1ff" stroke-width="2"/>` : ""}
        ${cur.length ? `<circle class="now" cx="${x(h.now)}" cy="${y(cur[0].r)}" r="3.5" fill="#6ec1ff"/>` : ""}
        ${fc.length ? `<polyline class="forecast" points="${fpath}" fill="none" stroke="#ffb74d" stroke-width="2" stroke-dasharray="5 4"/>` : ""}
        ${ticks}</svg>
      <div class="muted">${T("chart_caption")}${pts.length ? "" : ` · ${T("no_history")}`}${fc.length ? ` · ${T("forecast")} ${h.forecast.map((f) => `+${f.horizon_min}′ ${Math.round(f.capacity_ratio * 100)}%`).join(" ")}` : ""}</div>`;
    renderZoneFacts(id);
  }
  async function renderAudit() {
    const q = $("#audit-filter").value.trim();
    const res = await fetch(`/api/audit?limit=50${q ? `&q=${encodeURIComponent(q)}` : ""}`);
    if (!res.ok) return;
    const rows = await res.json();
    $("#audit .body").innerHTML = rows.length ? rows.map((a) => `
      <div class="audit-row" data-action="${esc(a.action)}"><b>${clock(a.at)}</b> ${esc(a.actor)} (${esc(a.role)}) · ${esc(a.action)}
        ${a.plan_id ? ` · ${esc(planName(a.plan_id))}` : ""}${a.level_from || a.level_to ? ` · ${levelBadge(a.level_from)} → ${levelBadge(a.level_to)}` : ""}
        ${a.reason ? `<div class="muted">${esc(a.reason)}</div>` : ""}</div>`).join("") : `<p class="muted">${T("no_audit")}</p>`;
  }
  let auditTimer = null;
  const auditSoon = () => { clearTimeout(auditTimer); auditTimer = setTimeout(renderAudit, 200); };

  // On the map: which areas the rule-based stand-in answered for (the measures engine's
  // forecast did not finish within its budget, issue 11 point 3). Hidden while none does.
  function renderEngine() {
    const el = $("#engine-banner");
    if (!el) return;
    const rules = (S.site.plans || []).filter((sp) => (S.plans[sp.id] || {}).engine === "rules");
    el.hidden = !rules.length;
    el.dataset.plans = rules.map((sp) => sp.id).join(",");
    el.textContent = rules.length ? T("engine_banner", { plans: rules.map((sp) => sp.name[lang]).join(lang === "zh" ? "、" : ", ") }) : "";
  }
  function renderAll() {
    window.crowdflow.renders = (window.crowdflow.renders || 0) + 1;  // counted for tests
    renderEngine(); renderRecs(); renderPlans(); renderMode(); renderAlarms(); renderMyPost(); renderInForce(); renderOrders(); paintActions(); paintCameras();
    if (S.panelZone) renderZoneFacts(S.panelZone);
  }

  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button");
    if (!b) return;
    if (b.classList.contains("cmd-confirm")) command({ kind: "confirm", recommendation_id: b.dataset.id });
    else if (b.classList.contains("cmd-reject")) command({ kind: "reject", recommendation_id: b.dataset.id });
    else if (b.classList.contains("cmd-ack")) command({ kind: "ack_alarm", alarm_id: b.dataset.id });
    else if (b.classList.contains("cmd-mode")) switchMode(b.dataset.mode);
    else if (b.classList.contains("ord-ack")) answerOrder(b.dataset.id, "acknowledged");
    else if (b.classList.contains("ord-inplace")) answerOrder(b.dataset.id, "in_place");
    else if (b.classList.contains("ord-cannot")) answerOrder(b.dataset.id, "cannot");
    else if (b.classList.contains("cmd-auto")) command({ kind: "set_auto", plan_id: b.dataset.plan, auto: b.dataset.auto === "true" });
    else if (b.classList.contains("cmd-override")) {
      const lv = b.closest(".plan").querySelector(".override-level").value;
      override(b.dataset.plan, lv || null);
    }
  });
  document.addEventListener("submit", (ev) => {  // a count typed at a pen: Enter or the Report button
    const f = ev.target.closest("form.hold-form");
    if (!f) return;
    ev.preventDefault();
    reportQueue(f.dataset.hold, f);
  });
  document.addEventListener("change", (ev) => {
    if (ev.target.id === "post-select") { localStorage.setItem("crowdflow.post", ev.target.value); renderMyPost(); renderHolds(); centreOnPost(); }
  });
  $("#audit-filter").addEventListener("input", auditSoon);

  // ---------------------------------------------------------------- layout, language, session
  function setLayout(l) {
    document.body.classList.toggle("layout-phone", l === "phone");
    document.body.classList.toggle("layout-wall", l === "wall");
    $("#layout").textContent = T(l === "phone" ? "layout_wall" : "layout_phone");
    if (map) setTimeout(() => map.invalidateSize(), 50);
  }
  const layoutParam = new URLSearchParams(location.search).get("layout");
  let layout = layoutParam || localStorage.getItem("crowdflow.layout") || (matchMedia("(max-width: 760px)").matches ? "phone" : "wall");
  $("#layout").onclick = () => { layout = layout === "phone" ? "wall" : "phone"; localStorage.setItem("crowdflow.layout", layout); setLayout(layout); };

  function relabel() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = T(el.dataset.i18n); });
    $("#lang").textContent = T("lang_button");
    $("#audit-filter").placeholder = T("audit_filter");
    document.title = T("title");
    setLayout(layout);
    if (S.me) $("#who").textContent = `${S.me.user} · ${T(`role_${S.me.role}`)}`;
    if (map) { Object.keys(layers).forEach(paint); legend(); renderAll(); renderHolds(); renderAudit(); }
  }
  $("#lang").onclick = () => { lang = lang === "zh" ? "en" : "zh"; localStorage.setItem("crowdflow.lang", lang); relabel(); };
  $("#logout").onclick = async () => { await fetch("/api/logout", { method: "POST" }); location.reload(); };

  function showLogin(msg) {
    $("#app").hidden = true;
    $("#logout").hidden = true;
    $("#login").hidden = false;
    $("#login-error").textContent = msg || "";
  }
  $("#login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const res = await fetch("/api/login", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: $("#username").value, password: $("#password").value }) });
    if (res.ok) { $("#password").value = ""; start(); }
    else showLogin(T(res.status === 429 ? "login_limited" : "login_failed"));
  });

  // A batch frame (what queued up for this client) applies its items in order and repaints the
  // cameras and the panels once at its end, not once per item: both walk every camera and alarm.
  let inBatch = false, needCameras = false, needAll = false, needHolds = false;
  function onMessage(msg) {
    if (msg.type === "batch") {
      inBatch = true;
      try { msg.items.forEach(onMessage); } finally { inBatch = false; }
      if (needAll) renderAll();
      else { if (needCameras) paintCameras(); if (needHolds) renderHolds(); }
      needAll = needCameras = needHolds = false;
      return;
    }
    if (msg.type === "snapshot") {
      for (const k of ["plans", "recs", "alarms"]) for (const id of Object.keys(S[k])) delete S[k][id];
      msg.zones.forEach((s) => { S.states[s.zone_id] = s; });
      msg.plans.forEach((p) => { S.plans[p.plan_id] = p; });
      msg.recommendations.forEach((r) => { S.recs[r.id] = r; });
      msg.alarms.forEach((a) => { S.alarms[a.id] = a; });
      S.mode = msg.mode;
      S.inforce = msg.inforce;
      for (const id of Object.keys(S.orders)) delete S.orders[id];
      (msg.orders || []).forEach((o) => { S.orders[o.id] = o; });
      for (const id of Object.keys(S.holds)) delete S.holds[id];
      (msg.holds || []).forEach((h) => { S.holds[h.hold_id] = h; });
      Object.keys(layers).forEach(paint);
      renderAll();
      renderHolds();
      return;
    }
    if (msg.type === "zone") {
      S.states[msg.state.zone_id] = msg.state;
      paint(msg.state.zone_id);
      if (inBatch) needCameras = true; else paintCameras();
      return;
    }
    const r = msg.rec;
    if (msg.type === "hold") {  // the queue panel and the pen's marker only
      S.holds[r.hold_id] = r;
      if (inBatch) needHolds = true; else renderHolds();
      return;
    }
    if (msg.type === "plan") S.plans[r.plan_id] = r;
    else if (msg.type === "recommendation") S.recs[r.id] = r;
    else if (msg.type === "alarm") S.alarms[r.id] = r;
    else if (msg.type === "mode") S.mode = r;
    else if (msg.type === "inforce") S.inforce = r;
    else if (msg.type === "order") {
      const fresh = !S.orders[r.id];
      S.orders[r.id] = r;
      if (fresh && r.post === myPost() && r.status === "sent") alertOfficer();
      summarySoon();
    }
    else if (msg.type === "audit") { auditSoon(); return; }
    if (inBatch) needAll = true; else renderAll();
  }
  function connect() {
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    const conn = $("#conn");
    ws.onopen = () => { conn.className = "conn up"; conn.dataset.i18n = "live"; conn.textContent = T("live"); };
    ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
    ws.onclose = async (ev) => {
      conn.className = "conn down"; conn.dataset.i18n = "offline"; conn.textContent = T("offline");
      if (ev.code === 4401 || (await fetch("/api/me")).status === 401) { showLogin(); return; }
      setTimeout(connect, 1000);
    };
  }
  function centreOnPost() {  // staff on a phone see the ground around their own post first
    const f = S.feats[`post:${myPost()}`];
    if (layout === "phone" && f) map.setView([f.geometry.coordinates[1], f.geometry.coordinates[0]], 17);
  }
  async function start() {
    const res = await fetch("/api/me");
    if (res.status === 401) { showLogin(); return; }
    S.me = await res.json();
    $("#login").hidden = true;
    $("#app").hidden = false;
    $("#logout").hidden = false;
    if (!map) {
      S.site = await (await fetch("/api/site")).json();
      buildMap(S.site);
      loadBasemap();
    }
    relabel();
    loadSummary();
    fitZones();  // after the layout has sized the map: the first view shows every zone
    centreOnPost();
    requestAnimationFrame(declutter);
    renderAudit();
    connect();
  }
  relabel();
  start();
  setInterval(() => {  // keep "n s ago" honest (not while a count is being typed or sent at a pen)
    Object.keys(layers).forEach(paint);
    if (S.site && !(document.activeElement && document.activeElement.closest("#holds"))) renderHolds();
    if (S.site && document.querySelector("#inforce li.setting-up")) renderInForce();  // it acts now
  }, 5000);
})();
