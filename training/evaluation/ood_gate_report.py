"""The image gate's report files: ``gate.json``, ``gate.md``, ``images.csv``, ``scores.png``,
``roc.png``, and ``comparison.md``/``.json`` over several versions.

Takes the plain figures :func:`training.evaluation.ood_gate.measure_version` returns.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from contracts.metadata import jsonable

DPI = 110
COLOURS = {"test": "tab:green", "real": "tab:olive", "far": "tab:red", "degraded": "tab:orange"}
LABELS = {
    "test": "test-split lesions",
    "real": "full-size lesion photos",
    "far": "far from lesion",
    "degraded": "degraded lesion photos",
}
DASH = "\N{EN DASH}"


def _rate(r: dict[str, Any] | None, ci: bool = True) -> str:
    if not r or r["rate"] is None:
        return DASH
    text = f"{r['count']}/{r['n']} ({100 * r['rate']:.1f} %)"
    return f"{text} [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]" if ci else text


def _reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in reasons.items()) or DASH


def _num(value: float | None, digits: int = 4) -> str:
    return DASH if value is None else f"{value:.{digits}g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _kind_table(section: dict[str, Any], medians: dict[str, float | None]) -> str:
    header = ["kind", "images", "caught [95% CI]", "caught first by", "quality checks alone"]
    header += ["score alone", "median score"]
    rows = []
    for kind, s in [*section["kinds"].items(), ("**all**", section["overall"])]:
        rows.append(
            [
                kind,
                str(s["n"]),
                _rate(s["refused"]),
                _reasons(s["reasons"]),
                _rate(s["quality_alone"], ci=False),
                _rate(s["score_alone"], ci=False),
                _num(medians.get(kind)),
            ]
        )
    return _table(header, rows)


def render(figures: dict[str, Any], medians: dict[str, dict[str, float | None]]) -> str:
    """``gate.md``: the figures as tables (plots referenced beside it)."""
    v, d, sc = figures["version"], figures["data"], figures["score"]
    score = (
        f"out-of-distribution score `{v['score']}`, refused over {_num(v['ood_threshold'])}"
        if v["ood_threshold"] is not None
        else "**no out-of-distribution output: quality checks only**"
    )
    out = [
        f"# Image gate: {v['name']}",
        "",
        f"Version `{v['folder']}` ({v['model_name']}, input {v['input_size'][0]}x"
        f"{v['input_size'][1]}); {score}. Quality thresholds: {v['quality_source']}. The gate "
        "as the gateway applies it: size checks on the decoded image, content checks on the "
        "model input, then the score; the first failed check is the reason.",
        "",
        f"Data `{d.get('data_dir')}` (version `{str(d['dataset_version'])[:16]}`, split from "
        f"{d['split_from']}): {d['test_images']} test images of {d['test_lesions']} lesions "
        f"(of {d['test_split_images']} in the test split); {d['real_images']} full-size lesion "
        f"photos; {d['far_images']} far-from-lesion images; the degraded corpus from "
        f"{len(d['degraded_sources'])} test photos. Seed {d['seed']}. Written "
        f"{datetime.now(UTC).isoformat(timespec='seconds')}.",
        "",
    ]
    out += [f"> **Note:** {n}" for n in figures["notes"]] + ([""] if figures["notes"] else [])
    t = v["quality_thresholds"] or {}
    out += [
        "## Thresholds",
        "",
        _table(
            ["check", "threshold"],
            [[k, _num(float(t[k]))] for k in t]
            + ([] if t else [["quality checks", "none"]])
            + [["out-of-distribution score, at most", _num(v["ood_threshold"])]],
        ),
        "",
        "## Lesion photos: false refusals",
        "",
        'Percentages with exact 95 % intervals. "Score alone": images whose score is over '
        "the threshold, whatever the quality checks said.",
        "",
    ]
    rows = []
    for key, label in (("test", "test split"), ("real", "full-size photos")):
        s = figures["in_distribution"][key]
        rows.append(
            [
                label,
                str(s["n"]),
                _rate(s["refused"]),
                _reasons(s["reasons"]),
                _rate(s["quality_alone"], ci=False),
                _rate(s["score_alone"], ci=False),
            ]
        )
    out += [
        _table(
            ["set", "images", "refused [95% CI]", "by reason", "quality alone", "score alone"],
            rows,
        ),
        "",
        "## Far from lesion: catch rate per kind",
        "",
        _kind_table(figures["far"], medians.get("far", {})),
        "",
        "## Degraded lesion photos: catch rate per kind",
        "",
        _kind_table(figures["degraded"], medians.get("degraded", {})),
        "",
        "## The score",
        "",
    ]
    if sc is None:
        out += ["This version has no out-of-distribution score.", ""]
        return "\n".join(out)
    auc = sc["auc"]
    out += [
        f"ROC AUC, test lesions vs far from lesion: **{_num(auc['test_vs_far'], 3)}**; vs "
        f"degraded: {_num(auc['test_vs_degraded'], 3)} (higher score = out of distribution).",
        "",
        _table(
            ["test lesions refused by the score", "its threshold", "far caught", "degraded caught"],
            [
                [
                    f"{100 * float(share):g} %",
                    _num(a["threshold"]),
                    _num(a["far_caught"], 3),
                    _num(a["degraded_caught"], 3),
                ]
                for share, a in sc["far_caught_at_test_refusal"].items()
            ],
        ),
        "",
        "Thresholds taken on the test split itself: a comparison of scores, not the gate.",
        "",
    ]
    cols = ["p1", "p5", "p50", "p95", "p99"]
    q_rows = [
        [LABELS[c], *[_num(q.get(p)) for p in cols]]
        for c, q in sc["quantiles"].items()
        if q is not None
    ]
    out += [
        _table(["score of", *cols], q_rows),
        "",
        "![scores](scores.png)",
        "",
        "![roc](roc.png)",
        "",
    ]
    return "\n".join(out)


def _bins(scores: dict[str, np.ndarray]) -> tuple[np.ndarray, bool]:
    values = np.concatenate([v for v in scores.values() if len(v)])
    lo = float(values.min())
    hi = max(float(np.quantile(v, 0.99)) for v in scores.values() if len(v))
    hi = hi if hi > lo else lo + 1.0
    log = lo > 0 and hi / lo > 50
    edges = np.geomspace(lo, hi, 41) if log else np.linspace(lo, hi, 41)
    return edges, log


def score_plot(
    scores: dict[str, np.ndarray],
    far_kinds: dict[str, np.ndarray],
    threshold: float | None,
    path: Path,
) -> Path:
    """Score histograms per corpus (densities; the top 1 % of each clipped into the last bin)
    and the far corpus's scores per kind, with the threshold."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    edges, log = _bins(scores)
    for corpus, values in scores.items():
        if len(values):
            left.hist(
                np.clip(values, edges[0], edges[-1]),
                bins=edges,
                density=True,
                histtype="step",
                linewidth=1.6,
                color=COLOURS[corpus],
                label=f"{LABELS[corpus]} (n={len(values)})",
            )
    right_data = [("test lesions", scores.get("test", np.array([])))]
    right_data += [(k, v) for k, v in far_kinds.items() if len(v)]
    right_data += [("degraded", scores.get("degraded", np.array([])))]
    right_data = [(k, v) for k, v in right_data if len(v)]
    right.boxplot(
        [v for _, v in right_data], orientation="horizontal", whis=(1, 99), showfliers=True
    )
    right.set_yticks(range(1, len(right_data) + 1), [k for k, _ in right_data], fontsize=8)
    right.invert_yaxis()  # test lesions on top
    for ax in (left, right):
        if log:
            ax.set_xscale("log")
        if threshold is not None:
            ax.axvline(threshold, color="black", linestyle="--", label="threshold")
        ax.set_xlabel("out-of-distribution score (higher: refuse)")
    left.set(ylabel="density", title="Score by corpus")
    right.set_title("Score by kind (whiskers: 1st-99th percentile)")
    left.legend(fontsize=8)
    return _save(fig, path)


def roc_plot(scores: dict[str, np.ndarray], threshold: float | None, path: Path) -> Path:
    """ROC of the score: test lesions (negatives) against each out-of-distribution corpus,
    whole and up to 10 % of test lesions refused (where a gate operates)."""
    fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.8))
    test = scores.get("test", np.array([]))
    for ax, limit in zip(axes, (1.0, 0.1), strict=True):
        for corpus in ("far", "degraded"):
            other = scores.get(corpus, np.array([]))
            if not len(test) or not len(other):
                continue
            labels = np.r_[np.zeros(len(test)), np.ones(len(other))]
            fpr, tpr, _ = roc_curve(labels, np.r_[test, other])
            ax.plot(fpr, tpr, color=COLOURS[corpus], label=f"test lesions vs {LABELS[corpus]}")
            if threshold is not None:
                ax.plot(
                    np.mean(test > threshold),
                    np.mean(other > threshold),
                    "o",
                    color=COLOURS[corpus],
                    markeredgecolor="black",
                )
        ax.plot([0, limit], [0, limit], color="grey", linewidth=0.8, linestyle=":")
        ax.set(
            xlabel="test lesions refused (false refusals)",
            ylabel="caught",
            xlim=(0, limit),
            ylim=(0, 1.01),
            title="ROC of the score" if limit == 1 else "up to 10 % refused",
        )
    axes[0].legend(fontsize=8, loc="lower right", title="dots: the version's threshold")
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _medians(measured: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    def median(values: np.ndarray) -> float | None:
        return float(np.median(values)) if len(values) else None

    rows = measured["rows"]
    out: dict[str, dict[str, float | None]] = {}
    for corpus in ("far", "degraded"):
        kinds = dict.fromkeys(r["kind"] for r in rows if r["corpus"] == corpus)
        out[corpus] = {
            k: median(
                np.array(
                    [
                        r["score"]
                        for r in rows
                        if r["corpus"] == corpus and r["kind"] == k and r["score"] is not None
                    ]
                )
            )
            for k in kinds
        }
        out[corpus]["**all**"] = median(measured["scores"].get(corpus, np.array([])))
    return out


def write(measured: dict[str, Any], folder: Path) -> Path:
    """Write one version's report files into ``folder``; returns ``gate.md``'s path."""
    folder.mkdir(parents=True, exist_ok=True)
    figures = measured["figures"]
    plots = {}
    if figures["score"] is not None:
        threshold = figures["version"]["ood_threshold"]
        plots["scores"] = score_plot(
            measured["scores"], measured["far_kinds"], threshold, folder / "scores.png"
        ).name
        plots["roc"] = roc_plot(measured["scores"], threshold, folder / "roc.png").name
    figures = {**figures, "plots": plots}
    (folder / "gate.json").write_text(json.dumps(jsonable(figures), indent=2) + "\n")
    rows = measured["rows"]
    with open(folder / "images.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["corpus"])
        writer.writeheader()
        writer.writerows(rows)
    path = folder / "gate.md"
    path.write_text(render(figures, _medians(measured)) + "\n")
    return path


def _headline(f: dict[str, Any]) -> dict[str, Any]:
    sc = f["score"] or {}
    at1 = (sc.get("far_caught_at_test_refusal") or {}).get("0.01") or {}
    return {
        "version": f["version"]["name"],
        "score": f["version"]["score"],
        "threshold": f["version"]["ood_threshold"],
        "test_refused": f["in_distribution"]["test"]["refused"],
        "real_refused": f["in_distribution"]["real"]["refused"],
        "far_caught": f["far"]["overall"]["refused"],
        "far_caught_by_score": f["far"]["overall"]["score_alone"],
        "degraded_caught": f["degraded"]["overall"]["refused"],
        "auc_test_vs_far": (sc.get("auc") or {}).get("test_vs_far"),
        "far_caught_at_1pct_test_refused": at1.get("far_caught"),
    }


def one_line(figures: dict[str, Any]) -> str:
    """A line for the terminal."""
    h = _headline(figures)
    score = (
        f"score {h['score']} > {_num(h['threshold'])}"
        if h["threshold"] is not None
        else ("quality checks only")
    )
    return (
        f"{h['version']} ({score}): test lesions refused {_rate(h['test_refused'], False)}, "
        f"far caught {_rate(h['far_caught'], False)}, degraded caught "
        f"{_rate(h['degraded_caught'], False)}, AUC test vs far {_num(h['auc_test_vs_far'], 3)}"
    )


def write_comparison(all_figures: list[dict[str, Any]], folder: Path) -> Path:
    """``comparison.md`` and ``comparison.json``: one row per version."""
    heads = [_headline(f) for f in all_figures]
    (folder / "comparison.json").write_text(json.dumps(jsonable(heads), indent=2) + "\n")
    header = [
        "version",
        "score",
        "threshold",
        "test refused",
        "real refused",
        "far caught",
        "far caught by score",
        "degraded caught",
        "AUC test vs far",
        "far caught at 1 % test refused",
    ]
    rows = [
        [
            h["version"],
            str(h["score"] or DASH),
            _num(h["threshold"]),
            _rate(h["test_refused"], False),
            _rate(h["real_refused"], False),
            _rate(h["far_caught"], False),
            _rate(h["far_caught_by_score"], False),
            _rate(h["degraded_caught"], False),
            _num(h["auc_test_vs_far"], 3),
            _num(h["far_caught_at_1pct_test_refused"], 3),
        ]
        for h in heads
    ]
    path = folder / "comparison.md"
    path.write_text("# Image gate: versions compared\n\n" + _table(header, rows) + "\n")
    return path
