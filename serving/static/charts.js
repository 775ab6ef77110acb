// Small inline-SVG charts (no library, no CDN): lines over time and grouped bars.
"use strict";
const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#4a78b5", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d6a9f", "#30343f"];
  const W = 420, H = 200, M = { left: 42, right: 10, top: 10, bottom: 40 };

  function node(tag, attrs = {}, text) {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  }

  // legend: [{name, color}] shown as coloured names under the title.
  function frame(title, svg, legend = []) {
    const caption = Skin.el("figcaption", { text: title });
    for (const item of legend) {
      const key = Skin.el("span", { class: "legend", text: `■ ${item.name}` });
      key.style.color = item.color; // CSSOM, not a style attribute: CSP-safe
      caption.append(" ", key);
    }
    const fig = Skin.el("figure", { "data-chart": title });
    fig.append(svg, caption);
    return fig;
  }

  function axes(svg, yMin, yMax, fmt) {
    for (let i = 0; i <= 4; i++) {
      const v = yMin + ((yMax - yMin) * i) / 4;
      const y = M.top + (H - M.top - M.bottom) * (1 - i / 4);
      svg.append(node("line", { x1: M.left, x2: W - M.right, y1: y, y2: y, stroke: "#e4e7eb" }));
      svg.append(node("text", { x: M.left - 4, y: y + 3, "text-anchor": "end" }, fmt(v)));
    }
  }

  // series: [{name, points: [{x: Date, y: number|null}]}]; hlines: [{y, label}]
  function line(title, series, { yMin = 0, yMax = null, hlines = [], fmt = (v) => v.toFixed(2) } = {}) {
    const svg = node("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
    const all = series.flatMap((s) => s.points).filter((p) => p.y !== null && p.y !== undefined);
    const xs = all.map((p) => p.x.getTime());
    const top = yMax ?? Math.max(...all.map((p) => p.y), ...hlines.map((h) => h.y), 1e-9) * 1.1;
    const x0 = Math.min(...xs), x1 = Math.max(...xs);
    const sx = (t) => (x1 === x0 ? (M.left + W - M.right) / 2
      : M.left + ((t - x0) / (x1 - x0)) * (W - M.left - M.right));
    const sy = (v) => M.top + (H - M.top - M.bottom) * (1 - (v - yMin) / (top - yMin));
    axes(svg, yMin, top, fmt);
    for (const h of hlines) {
      svg.append(node("line", { x1: M.left, x2: W - M.right, y1: sy(h.y), y2: sy(h.y),
        stroke: "#a00", "stroke-dasharray": "4 3", "data-hline": h.label }));
      svg.append(node("text", { x: W - M.right, y: sy(h.y) - 3, "text-anchor": "end" }, h.label));
    }
    series.forEach((s, i) => {
      const pts = s.points.filter((p) => p.y !== null && p.y !== undefined);
      const color = s.color || COLORS[i % COLORS.length];
      if (pts.length > 1) {
        svg.append(node("polyline", { fill: "none", stroke: color, "stroke-width": 2,
          "stroke-dasharray": s.dashed ? "6 4" : "", "data-series": s.name,
          points: pts.map((p) => `${sx(p.x.getTime())},${sy(p.y)}`).join(" ") }));
      }
      for (const p of pts) {
        svg.append(node("circle", { cx: sx(p.x.getTime()), cy: sy(p.y), r: 3, fill: color,
          "data-series": s.name, "data-value": p.y },
        ));
      }
    });
    if (xs.length) {
      const fmtDate = (t) => new Date(t).toISOString().slice(0, 16).replace("T", " ");
      svg.append(node("text", { x: M.left, y: H - 22 }, fmtDate(x0)));
      if (x1 !== x0) svg.append(node("text", { x: W - M.right, y: H - 22, "text-anchor": "end" }, fmtDate(x1)));
    } else {
      svg.append(node("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data yet"));
    }
    return frame(title, svg, series.map((s, i) => ({ name: s.name, color: s.color || COLORS[i % COLORS.length] })));
  }

  // Reference vs window shares per bin, side by side.
  function bars(title, labels, reference, windowShares) {
    const svg = node("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
    const top = Math.max(...reference, ...windowShares, 1e-9) * 1.1;
    const sy = (v) => M.top + (H - M.top - M.bottom) * (1 - v / top);
    axes(svg, 0, top, (v) => `${Math.round(100 * v)}%`);
    const step = (W - M.left - M.right) / labels.length, bw = Math.max(1, step / 2 - 1);
    labels.forEach((label, i) => {
      const x = M.left + i * step;
      [[reference[i], COLORS[6], "reference"], [windowShares[i], COLORS[1], "window"]].forEach(([v, c, k], j) => {
        svg.append(node("rect", { x: x + j * bw, y: sy(v), width: bw, height: sy(0) - sy(v), fill: c,
          "data-kind": k, "data-bin": label, "data-value": v }));
      });
      svg.append(node("text", { x: x + step / 2, y: H - M.bottom + 10, "text-anchor": "end",
        transform: `rotate(-40 ${x + step / 2} ${H - M.bottom + 10})` }, label));
    });
    return frame(title, svg, [{ name: "reference", color: COLORS[6] }, { name: "window", color: COLORS[1] }]);
  }
  return { line, bars, COLORS };
})();
