// The operator's page: drift per feature (content against the training data, capture against
// the frozen baseline), its history, refused uploads per day, live performance from feedback
// beside the validation figures, and the retraining recommendation.
"use strict";
(() => {
  const { api, el, pct } = Skin;
  const status = document.getElementById("status");
  const fixed = (v, d = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
  const date = (s) => new Date(s);

  function summary(m) {
    const ref = m.reference;
    document.getElementById("overview").textContent =
      `Status: ${m.status}. Model ${m.model.name} version ${m.model.version}; ` +
      (ref ? `reference ${ref.version} (data version ${String(ref.dataset_version || "unknown").slice(0, 12)}); `
        : `${m.detail} `) +
      `window: ${m.window.size} predictions (at most ${m.window.max_predictions}` +
      `${m.window.days ? `, last ${m.window.days} days` : ""}); drift when PSI > ${m.bounds.psi} ` +
      `and p < ${m.bounds.p_value}, with at least ${m.bounds.min_window} values.`;
    const base = document.getElementById("baseline");
    base.dataset.frozen = String(Boolean(m.baseline));
    base.textContent = m.baseline
      ? `Image size, aspect and format are compared with capture baseline ${m.baseline.id}, frozen ` +
        `${date(m.baseline.frozen_at).toISOString().slice(0, 16).replace("T", " ")} UTC from ` +
        `${m.baseline.records} predictions; the other features with the training reference.`
      : `Image size, aspect and format: ${m.baseline_detail}.`;
    const box = document.getElementById("retraining");
    box.className = m.retraining.recommended ? "refer" : "no-refer";
    box.dataset.recommended = String(m.retraining.recommended);
    box.replaceChildren(
      el("strong", { text: m.retraining.recommended ? "Retraining recommended" : "No retraining needed" }),
      el("ul", {}, ...m.retraining.reasons.map((r) => el("li", { text: r }))),
    );
    const rows = Object.entries(m.features).map(([name, f]) => el("tr", { "data-feature": name, "data-group": f.group },
      el("td", { text: name }),
      el("td", { class: "compared", text: f.compared_with || "no baseline" }),
      el("td", { class: "num", text: String(f.n) }),
      el("td", { class: "num psi", text: fixed(f.psi) }),
      el("td", { class: "num", text: f.p_value === null ? "–" : Number(f.p_value).toPrecision(2) }),
      el("td", { class: `status ${f.flag ? "flag-drift" : f.status === "ok" ? "flag-ok" : "flag-none"}`, text: f.status }),
    ));
    document.querySelector("#features tbody").replaceChildren(...rows);
    const charts = Object.entries(m.features).filter(([, f]) => f.n > 0 && f.bins.length)
      .map(([name, f]) => Charts.bars(`${name} (n = ${f.n}, PSI ${fixed(f.psi)})`, f.bins, f.reference, f.window));
    document.getElementById("distribution-charts").replaceChildren(...charts);
  }

  function timeline(t) {
    const names = [...new Set(t.points.flatMap((p) => Object.keys(p.psi)))];
    const series = (key) => t.points.map((p) => ({ x: date(p.start), y: key(p) }));
    document.getElementById("timeline-charts").replaceChildren(
      Charts.line(`PSI per ${t.bucket}`, names.map((n) => ({ name: n, points: series((p) => p.psi[n]) })),
        { hlines: [{ y: t.bounds.psi, label: `bound ${t.bounds.psi}` }] }),
      Charts.line(`Predictions per ${t.bucket}`, [{ name: "predictions", points: series((p) => p.n) }],
        { fmt: (v) => v.toFixed(0) }),
      Charts.line("Mean brightness and contrast", [
        { name: "brightness", points: series((p) => p.brightness_mean) },
        { name: "contrast", points: series((p) => p.contrast_mean) }], { fmt: (v) => v.toFixed(0) }),
      Charts.line("Referral rate", [{ name: "referral rate", points: series((p) => p.referral_rate) }],
        { yMax: 1, fmt: (v) => `${Math.round(100 * v)}%` }),
    );
  }

  function refused(r) {
    const t = r.total;
    const reasons = (counts) => Object.entries(counts).map(([k, n]) => `${k} ${n}`).join(", ") || "–";
    document.getElementById("refusal-total").textContent =
      `Last ${r.days} days: ${t.refusals} uploads refused of ${t.refusals + t.predictions} ` +
      `(${pct(t.rate)}); by reason: ${reasons(t.by_reason)}. Refused uploads are never in the drift window.`;
    const rows = r.per_day.filter((d) => d.predictions + d.refusals > 0).reverse()
      .map((d) => el("tr", { "data-day": d.day, "data-rate": d.rate === null ? "" : String(d.rate) },
        el("td", { text: d.day }),
        el("td", { class: "num", text: String(d.predictions) }),
        el("td", { class: "num", text: String(d.refusals) }),
        el("td", { class: "num rate", text: pct(d.rate) }),
        el("td", { class: "reasons", text: reasons(d.by_reason) }),
      ));
    document.querySelector("#refusals tbody").replaceChildren(...rows);
    const points = r.per_day.filter((d) => d.rate !== null)
      .map((d) => ({ x: new Date(`${d.day}T00:00:00Z`), y: d.rate }));
    document.getElementById("refusal-charts").replaceChildren(
      Charts.line("Refusal rate per day", [{ name: "refusal rate", points }],
        { yMax: 1, fmt: (v) => `${Math.round(100 * v)}%` }));
  }

  function performance(p) {
    const rows = [], lines = [];
    p.versions.forEach((v, i) => {
      const val = v.validation.balanced_accuracy;
      const points = v.weeks.map((w) => ({ x: isoWeekStart(w.week), y: w.balanced_accuracy }));
      lines.push({ name: `v${v.model_version} live`, points, color: Charts.COLORS[i] });
      if (val !== null && val !== undefined) {
        lines.push({ name: `v${v.model_version} validation`, color: Charts.COLORS[i], dashed: true,
          points: points.map((q) => ({ x: q.x, y: val })) });
      }
      for (const w of [...v.weeks, { week: "all", ...v.overall }]) {
        rows.push(el("tr", { "data-version": v.model_version, "data-week": w.week },
          el("td", { text: v.model_version }), el("td", { text: w.week }),
          el("td", { class: "num", text: String(w.predictions) }),
          el("td", { class: "num", text: String(w.confirmed) }),
          el("td", { class: "num ba", text: fixed(w.balanced_accuracy) }),
          el("td", { class: "num", text: fixed(val) }),
          el("td", { class: "num", text: pct(w.referral_rate) }),
          el("td", { class: "num", text: `${pct(w.referral_sensitivity.value)} of ${w.referral_sensitivity.cases}` }),
          el("td", { class: "num", text: `${pct(w.sensitivity.mel.value)} of ${w.sensitivity.mel.cases}` }),
        ));
      }
    });
    document.querySelector("#performance tbody").replaceChildren(...rows);
    document.getElementById("performance-charts").replaceChildren(
      Charts.line("Balanced accuracy per ISO week (dashed: validation)", lines, { yMax: 1 }));
  }

  // "2026-W48" -> the Monday of that ISO week (UTC).
  function isoWeekStart(week) {
    const [y, w] = week.split("-W").map(Number);
    const jan4 = new Date(Date.UTC(y, 0, 4));
    const monday1 = new Date(jan4.getTime() - ((jan4.getUTCDay() + 6) % 7) * 864e5);
    return new Date(monday1.getTime() + (w - 1) * 7 * 864e5);
  }

  async function load(event) {
    if (event) event.preventDefault();
    status.className = "";
    status.textContent = "loading…";
    const days = document.getElementById("days").value || 30;
    const bucket = document.getElementById("bucket").value;
    try {
      const [m, t, p, r] = await Promise.all([
        api("/v1/monitoring"),
        api(`/v1/monitoring/timeline?days=${encodeURIComponent(days)}&bucket=${bucket}`),
        api(`/v1/monitoring/performance?weeks=${Math.max(1, Math.ceil(days / 7))}`),
        api(`/v1/monitoring/refusals?days=${encodeURIComponent(days)}`),
      ]);
      summary(m);
      timeline(t);
      refused(r);
      performance(p);
      document.getElementById("dashboard").classList.remove("hidden");
      status.textContent = `updated ${new Date().toLocaleString()}`;
    } catch (err) {
      status.className = "error";
      status.textContent = err.message;
    }
  }

  document.getElementById("load-form").addEventListener("submit", load);
  if (document.getElementById("api-key").value) load();
})();
