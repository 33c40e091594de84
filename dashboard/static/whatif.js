// What-if panel (issue 11): pick measures (or the recommended set) and see the next 30 minutes
// with and without them, from the live state, as a chart per affected zone. Self-contained:
// its own strings and rendering; it only needs the page's #whatif panel and the session cookie.
(function () {
  "use strict";
  const STR = {
    zh: {
      title: "推演（未来30分钟）", run: "推演", recommended: "推演推荐方案", none: "先勾选措施",
      with: "采取", without: "不采取", target: "目标", peak: "峰值", running: "推演中…",
      engine_mpc: "决策：模型预测", engine_rules: "决策：规则预案（预测未完成）", in_force: "已执行",
      unknown: "无数据，按最不利估计", nochange: "所选措施对各区域无明显影响", error: "推演失败",
      acts: "到位生效（人员调派+布设）",
      stage: ["", "限流", "疏导", "封路", "停止进入"],
    },
    en: {
      title: "What-if (next 30 min)", run: "Run what-if", recommended: "What-if: recommended", none: "Pick measures first",
      with: "with", without: "without", target: "target", peak: "peak", running: "Running…",
      engine_mpc: "Decisions: model forecast", engine_rules: "Decisions: rule-based (forecast did not finish)",
      in_force: "in force", unknown: "unknown, worst plausible", nochange: "No zone changes noticeably", error: "What-if failed",
      acts: "acting from (staff travel + set-up)",
      stage: ["", "metering", "flow control", "road closure", "entry stop"],
    },
  };
  const lang = () => (localStorage.getItem("crowdflow.lang") === "en" ? "en" : "zh");
  const S = (k) => STR[lang()][k];
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
  let measures = null;
  let last = null;
  let engines = {};

  function hhmm(tod, min) {
    const t = Math.round(tod + min * 60) % 86400;
    return `${String(Math.floor(t / 3600)).padStart(2, "0")}:${String(Math.floor((t % 3600) / 60)).padStart(2, "0")}`;
  }

  function chart(c, minutes) {
    const W = 260, H = 80, top = Math.max(1.2, ...c.with, ...c.without, c.target || 0) * 1.05;
    const x = (i) => (i / (minutes.length - 1)) * W;
    const y = (v) => H - (v / top) * H;
    const line = (vals) => vals.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    const tgt = c.target ? `<line class="wi-target" x1="0" x2="${W}" y1="${y(c.target)}" y2="${y(c.target)}"/>` : "";
    return `<svg class="wi-chart" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img">
      ${tgt}<polyline class="wi-without" points="${line(c.without)}"/><polyline class="wi-with" points="${line(c.with)}"/></svg>`;
  }

  // when each picked measure acts on the ground: the "with" curve leaves "without" from then
  function acts(res) {
    const at = Object.entries(res.acts_at_min || {});
    if (!at.length) return "";
    const name = (id) => { const m = (measures || []).find((x) => x.id === id); return m ? m.name[lang()] : id; };
    return `<p class="wi-acts">${esc(S("acts"))}: ${at.map(([id, min]) =>
      `<span data-measure="${esc(id)}">${esc(name(id))} ${hhmm(res.tod_s, min)}</span>`).join(", ")}</p>`;
  }

  function render() {
    const box = document.querySelector("#whatif .body");
    if (!box) return;
    document.querySelector("#whatif h2").textContent = S("title");
    if (!measures) { box.innerHTML = ""; return; }
    const eng = Object.values(engines).includes("rules") ? "rules" : (Object.keys(engines).length ? "mpc" : null);
    const checked = new Set([...box.querySelectorAll("input[data-measure]:checked")].map((i) => i.dataset.measure));
    const list = measures.map((m) => `<label class="wi-m"><input type="checkbox" data-measure="${esc(m.id)}" ${checked.has(m.id) ? "checked" : ""}>
        ${esc(m.name[lang()])} <small>${esc(S("stage")[m.stage] || "")} · ${m.level}</small></label>`).join("");
    let out = "";
    if (last && last.error) out = `<p class="wi-error" role="alert">${esc(S("error"))}: ${esc(last.error)}</p>`;
    else if (last) {
      const parts = last.curves.map((c) => {
        const name = esc(c.name[lang()]) + (c.unknown ? ` <small>(${esc(S("unknown"))})</small>` : "");
        const pw = c.peak_with, po = c.peak_without;
        return `<div class="wi-curve" data-element="${esc(c.element)}"><b>${name}</b>
          <div class="wi-peaks">${esc(S("with"))}: ${esc(S("peak"))} <span class="wi-pw">${pw[0].toFixed(2)}</span> @ ${hhmm(last.tod_s, pw[1])};
          ${esc(S("without"))}: <span class="wi-po">${po[0].toFixed(2)}</span> @ ${hhmm(last.tod_s, po[1])}${c.target ? ` · ${esc(S("target"))} ${c.target.toFixed(2)}` : ""}</div>
          ${chart(c, last.minutes)}</div>`;
      });
      out = `<p class="wi-legend"><span class="wi-key wi-with"></span>${esc(S("with"))} <span class="wi-key wi-without"></span>${esc(S("without"))}
        ${last.in_force.length ? ` · ${esc(S("in_force"))}: ${last.in_force.map(esc).join(", ")}` : ""}</p>`
        + acts(last) + (parts.join("") || `<p>${esc(S("nochange"))}</p>`);
    }
    box.innerHTML = `${eng ? `<p class="wi-engine wi-engine-${eng}">${esc(S("engine_" + eng))}</p>` : ""}
      <div class="wi-list">${list}</div>
      <button type="button" id="wi-run">${esc(S("run"))}</button>
      <button type="button" id="wi-rec">${esc(S("recommended"))}</button>
      <div id="wi-out" aria-live="polite">${out}</div>`;
    box.querySelector("#wi-run").onclick = () => run(false);
    box.querySelector("#wi-rec").onclick = () => run(true);
  }

  async function run(recommended) {
    const box = document.querySelector("#whatif .body");
    const picked = [...box.querySelectorAll("input[data-measure]:checked")].map((i) => i.dataset.measure);
    if (!recommended && !picked.length) { box.querySelector("#wi-out").textContent = S("none"); return; }
    box.querySelector("#wi-out").textContent = S("running");
    try {
      const r = await fetch("/api/whatif", { method: "POST", headers: { "content-type": "application/json" },
        credentials: "same-origin", body: JSON.stringify({ measures: picked, recommended }) });
      const body = await r.json();
      last = r.ok ? body : { error: body.detail || r.status };
    } catch (e) { last = { error: String(e) }; }
    render();
  }

  async function poll() {
    try {
      if (!measures) {
        const r = await fetch("/api/measures", { credentials: "same-origin" });
        if (r.ok) { measures = await r.json(); render(); }
      }
      if (measures) {
        const r = await fetch("/api/state", { credentials: "same-origin" });
        if (r.ok) {
          const st = await r.json();
          const next = {};
          for (const p of st.plans || []) if (p.engine) next[p.plan_id] = p.engine;
          if (JSON.stringify(next) !== JSON.stringify(engines)) { engines = next; render(); }
        }
      }
    } catch (e) { /* the page shows the connection state; try again */ }
    setTimeout(poll, measures ? 15000 : 2000);
  }

  document.addEventListener("click", (ev) => { if (ev.target && ev.target.id === "lang") setTimeout(render, 0); });
  window.CrowdflowWhatIf = { render, run };
  poll();
})();
