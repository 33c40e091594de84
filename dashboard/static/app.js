// Live map: zones coloured by load, grey "无数据" when unknown; WebSocket-pushed updates.
(function () {
  "use strict";
  let lang = localStorage.getItem("crowdflow.lang") || "zh";
  const T = (k) => (window.I18N[lang] || window.I18N.zh)[k] || k;
  const BANDS = [  // capacity ratio → colour (plan levels IV blue → I red; LB/T 068-2017)
    [0.95, "#d7191c", "≥95%"], [0.90, "#f07c19", "90–95%"], [0.80, "#f2c418", "80–90%"],
    [0.60, "#2b83ba", "60–80%"], [0.0, "#3aa357", "<60%"],
  ];
  const UNKNOWN = "#9aa0a6";
  const colour = (s) => {
    if (!s || s.status !== "ok" || s.capacity_ratio == null) return UNKNOWN;
    for (const [t, c] of BANDS) if (s.capacity_ratio >= t) return c;
    return BANDS[BANDS.length - 1][1];
  };

  const map = L.map("map", { zoomControl: true, attributionControl: false });
  const layers = {};      // zone id → Leaflet polygon
  const names = {};       // zone id → {zh, en}
  const states = {};      // zone id → ZoneState
  window.crowdflow = { states, layers };  // for tests and debugging

  function age(t) {
    if (t == null) return "";
    const s = Math.max(0, Date.now() / 1000 - t);
    return s < 120 ? `${Math.round(s)} ${T("seconds")}${T("ago")}` : `${Math.round(s / 60)} ${T("minutes")}${T("ago")}`;
  }
  function label(id) {
    const s = states[id];
    const n = names[id] ? names[id][lang] : id;
    if (!s || s.status !== "ok") {
      const last = s && s.last_known ? ` (${Math.round(s.last_known.count)}${T("people")} · ${age(s.last_known.at)})` : "";
      return `${n}<br>${T("unknown")}${last}`;
    }
    return `${n}<br>${Math.round(s.count)}${T("people")} · ${Math.round(s.capacity_ratio * 100)}%`;
  }
  function popup(id) {
    const s = states[id] || {};
    const rows = s.status === "ok"
      ? [[T("people"), Math.round(s.count)], [T("density"), `${s.density.toFixed(2)} /m²`],
         [T("ratio"), `${Math.round(s.capacity_ratio * 100)}%`], [T("capacity"), s.capacity],
         [T("coverage"), `${Math.round((s.coverage || 0) * 100)}%`],
         [T("sources"), (s.sources || []).join(", ")], [T("updated"), age(s.updated_at)]]
      : [[T("unknown"), ""], [T("reason"), s.reason || ""], [T("capacity"), s.capacity]];
    return `<b>${names[id][lang]}</b><table>` + rows.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join("") + "</table>";
  }
  function paint(id) {
    const layer = layers[id];
    if (!layer) return;
    const s = states[id];
    const unknown = !s || s.status !== "ok";
    layer.setStyle({ fillColor: colour(s), fillOpacity: unknown ? 0.35 : 0.65, color: unknown ? "#666" : "#222",
                     weight: 1, dashArray: unknown ? "4 4" : null });
    layer.getElement && layer.getElement() && layer.getElement().setAttribute("data-status", unknown ? "unknown" : "ok");
    layer.setTooltipContent(label(id));
    const tip = layer.getTooltip().getElement && layer.getTooltip().getElement();
    if (tip) { tip.classList.toggle("unknown", unknown); tip.classList.toggle("live", !unknown); }
    if (layer.isPopupOpen()) layer.setPopupContent(popup(id));
  }
  function legend() {
    document.getElementById("legend").innerHTML = `<b>${T("legend")}</b><br>` +
      BANDS.map(([, c, txt]) => `<i style="background:${c}"></i>${txt}`).join("<br>") +
      `<br><i style="background:${UNKNOWN}"></i>${T("legend_unknown")}`;
  }
  function relabel() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = T(el.dataset.i18n); });
    document.getElementById("lang").textContent = T("lang_button");
    document.title = T("title");
    Object.keys(layers).forEach(paint);
    legend();
  }
  document.getElementById("lang").onclick = () => {
    lang = lang === "zh" ? "en" : "zh";
    localStorage.setItem("crowdflow.lang", lang);
    relabel();
  };

  async function loadSite() {
    const site = await (await fetch("/api/site")).json();
    const bounds = L.latLngBounds([]);
    for (const f of site.features) {
      const p = f.properties;
      if (f.geometry.type === "Polygon" && p.kind === "zone") {
        const latlngs = f.geometry.coordinates[0].map(([lon, lat]) => [lat, lon]);
        const poly = L.polygon(latlngs, { className: `zone zone-${p.id}` }).addTo(map);
        poly.bindTooltip("", { permanent: true, direction: "center", className: "zone-label" });
        poly.bindPopup(() => popup(p.id));
        layers[p.id] = poly;
        names[p.id] = p.name;
        latlngs.forEach((ll) => bounds.extend(ll));
      } else if (p.kind === "road") {
        L.polyline(f.geometry.coordinates.map(([lon, lat]) => [lat, lon]), { color: "#7b8794", weight: 6, opacity: 0.6 })
          .bindTooltip(() => p.name[lang]).addTo(map);
      } else if (p.kind === "camera") {
        const [lon, lat] = f.geometry.coordinates;
        L.circleMarker([lat, lon], { radius: 4, color: "#0b3d91", fillOpacity: 1 })
          .bindTooltip(() => `${T("camera")}: ${p.name[lang]}`).addTo(map);
      }
    }
    map.fitBounds(bounds, { padding: [10, 10] });
    map.getContainer().classList.toggle("overview", map.getZoom() < DETAIL_ZOOM);
    relabel();
  }

  // Zoomed out, only live zones keep their labels (unknown ones stay grey and hatched), so the
  // map reads at a glance; zoomed in, every zone is labelled.
  const DETAIL_ZOOM = 18;
  map.on("zoomend", () => map.getContainer().classList.toggle("overview", map.getZoom() < DETAIL_ZOOM));

  function connect() {
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    const conn = document.getElementById("conn");
    ws.onopen = () => { conn.className = "conn up"; conn.dataset.i18n = "live"; conn.textContent = T("live"); };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === "snapshot") msg.zones.forEach((s) => { states[s.zone_id] = s; paint(s.zone_id); });
      else if (msg.type === "zone") { states[msg.state.zone_id] = msg.state; paint(msg.state.zone_id); }
    };
    ws.onclose = () => {
      conn.className = "conn down"; conn.dataset.i18n = "offline"; conn.textContent = T("offline");
      setTimeout(connect, 1000);
    };
  }

  loadSite().then(connect);
  setInterval(() => Object.keys(layers).forEach(paint), 5000);  // keep "n s ago" honest
})();
