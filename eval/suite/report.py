"""The suite's report: a Markdown table and a plot from one or more results files.

Per task and per difficulty group: success mean +- std over training seeds for each head (one column per head and
budget), the expert's success on the same evaluation episodes, inference latency per head, and the published
numbers (GPU, 3 seeds, top-5 protocol) beside ours, labelled as such. Group and suite averages are taken over the
tasks that every head in the table has finished, so an unfinished suite never compares unequal task sets.
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

import numpy as np

from mfp.eval.suite.published import GROUP_ORDER, PUBLISHED, PUBLISHED_NAMES, published_value
from mfp.eval.suite.results_file import ResultsFile, row_kind
from mfp.eval.suite.runner import job_key



def _head_label(head: str) -> str:
    """A registered head's report name (HeadSpec.label); any other column (a variant label) as it is."""
    from mfp.policies.heads import registered_heads

    spec = registered_heads().get(head)
    return spec.display_name if spec else head


def load_rows(paths) -> list[dict]:
    """All rows of the files; for a job present twice, the last row."""
    latest = {}
    for path in paths:
        for row in ResultsFile(path).rows():
            latest[job_key(row)] = row
    return list(latest.values())


def _budget_label(b: dict) -> str:
    return f"{b['preset']}, {b['steps']} steps x {b['batch_size']}, {b['demos']} demos"


def _columns(rows: list[dict]) -> list[tuple[str, str]]:
    """(head, budget label) per column: by budget, then the registry's head order, variant labels after the
    plain heads in alphabetical order (so the table reads the same whatever the hash seed)."""
    from mfp.policies.heads import head_names

    order = list(head_names())
    cols = {(r["head"], _budget_label(r["budget"])) for r in rows if row_kind(r) == "policy"}
    return sorted(cols, key=lambda c: (c[1], order.index(c[0]) if c[0] in order else len(order), c[0]))


def _task_order(rows: list[dict]) -> list[str]:
    tasks = {r["task"]: r["group"] for r in rows}
    return sorted(tasks, key=lambda t: (GROUP_ORDER.index(tasks[t]) if tasks[t] in GROUP_ORDER else 99, t))


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * np.mean(values)
    return f"{mean:.0f} ± {100 * np.std(values):.0f} ({len(values)})" if len(values) > 1 else f"{mean:.0f} (1)"


def summarize(rows: list[dict]) -> dict:
    """{'columns', 'tasks', 'success': {(task, col): [rates over seeds]}, 'expert': {task: rate}, 'latency': ...}"""
    columns = _columns(rows)
    success: dict = defaultdict(list)
    latency: dict = defaultdict(list)
    top5: dict = defaultdict(list)
    expert = {}
    for r in rows:
        if row_kind(r) == "expert":
            expert[r["task"]] = r["success_rate"]
            continue
        col = (r["head"], _budget_label(r["budget"]))
        success[(r["task"], col)].append(r["success_rate"])
        if r.get("inference_ms_p50") is not None:
            latency[col].append(r["inference_ms_p50"])
        if r.get("top5_success") is not None:
            top5[(r["task"], col)].append(r["top5_success"])
    tasks = [t for t in _task_order(rows) if any((t, c) in success for c in columns) or t in expert]
    return {"columns": columns, "tasks": tasks, "success": success, "expert": expert, "latency": latency,
            "top5": top5, "groups": {t: next(r["group"] for r in rows if r["task"] == t) for t in tasks}}


def _group_means(s: dict) -> dict:
    """(group or 'all', col) -> list over seeds of the mean over the group's complete tasks (per-seed means)."""
    complete = [t for t in s["tasks"] if all((t, c) in s["success"] for c in s["columns"])]
    out = {}
    groups = {"all": complete}
    for t in complete:
        groups.setdefault(s["groups"][t], []).append(t)
    for g, tasks in groups.items():
        for c in s["columns"]:
            n_seeds = min(len(s["success"][(t, c)]) for t in tasks) if tasks else 0
            out[(g, c)] = ([float(np.mean([s["success"][(t, c)][i] for t in tasks])) for i in range(n_seeds)], tasks)
    return out


def render_markdown(rows: list[dict], title: str = "Benchmark suite", plot_name: str | None = None) -> str:
    s = summarize(rows)
    cols = s["columns"]
    lines = [f"# {title}", ""]
    if not cols:
        return "\n".join(lines + ["No policy results yet."]) + "\n"
    budgets = sorted({c[1] for c in cols})
    lines += ["Success % on the fixed evaluation episodes of the final EMA checkpoint: mean ± std over training "
              "seeds (number of seeds). Expert: the task's scripted/expert policy on the same episodes (the ceiling, "
              f"from privileged state). Budget: {'; '.join(budgets)}.", ""]
    head = ["task", "group", "expert"] + [_head_label(h) + ("" if len(budgets) == 1 else f" [{b}]")
                                          for h, b in cols]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for t in s["tasks"]:
        ex = f"{100 * s['expert'][t]:.0f}" if t in s["expert"] else "–"
        lines.append("| " + " | ".join([t, s["groups"][t], ex] + [_fmt(s["success"].get((t, c), [])) for c in cols])
                     + " |")
    means = _group_means(s)
    for g in [g for g in GROUP_ORDER if any(k[0] == g for k in means)] + ["all"]:
        tasks = means[(g, cols[0])][1]
        if not tasks:
            continue
        ex = [s["expert"][t] for t in tasks if t in s["expert"]]
        ex_txt = f"{100 * np.mean(ex):.0f}" if len(ex) == len(tasks) else "–"
        label = "**suite average**" if g == "all" else f"**{g} average**"
        lines.append("| " + " | ".join([label, f"{len(tasks)} tasks", ex_txt] +
                                        [_fmt(means[(g, c)][0]) for c in cols]) + " |")
    lat = ["| inference ms p50 (batch 1, this machine) | | |"] + [
        f" {np.median(s['latency'][c]):.1f} |" if s["latency"][c] else " – |" for c in cols]
    lines.append("".join(lat))
    if any(s["top5"].values()):
        lines += ["", "Top-5 figure (mean of the 5 best evaluations during training: the papers' optimistic "
                  "protocol, for comparison only):", ""]
        lines += ["| task | " + " | ".join(_head_label(h) for h, _ in cols) + " |", "|" + " --- |" * (len(cols) + 1)]
        for t in s["tasks"]:
            lines.append(f"| {t} | " + " | ".join(_fmt(s["top5"].get((t, c), [])) for c in cols) + " |")
    lines += ["", "Published numbers (papers: RTX 4090, 3 seeds, mean of the top-5 evaluations during training, "
              "3000 epochs; **not our measurements**, shown for reference):", ""]
    pub_cols = ["adroit/hammer", "adroit/door", "adroit/pen", "easy", "medium", "hard", "very hard", "ms"]
    lines += ["| method | " + " | ".join(pub_cols) + " |", "|" + " --- |" * (len(pub_cols) + 1)]
    for h in PUBLISHED:
        lines.append(f"| {PUBLISHED_NAMES[h]} | " + " | ".join(f"{published_value(h, c):g}" for c in pub_cols) + " |")
    if plot_name:
        lines += ["", f"![success per task and head]({plot_name})"]
    return "\n".join(lines) + "\n"


def render_plot(rows: list[dict]) -> bytes:
    """Bars: success mean +- std per task and group average for each head; expert as a black tick; published
    group / Adroit figures as hollow diamonds (labelled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarize(rows)
    cols = s["columns"]
    means = _group_means(s)
    groups = [g for g in GROUP_ORDER if (g, cols[0]) in means and means[(g, cols[0])][1]] if cols else []
    labels = s["tasks"] + [f"{g} avg" for g in groups] + (["suite avg"] if cols and means[("all", cols[0])][1] else [])
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(cols))
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(labels)), 4.5))
    for i, c in enumerate(cols):
        vals = [s["success"].get((t, c), []) for t in s["tasks"]]
        vals += [means[(g, c)][0] for g in groups] + ([means[("all", c)][0]] if len(labels) > len(s["tasks"]) + len(groups) else [])
        m = [100 * np.mean(v) if v else np.nan for v in vals]
        e = [100 * np.std(v) if v else 0 for v in vals]
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, m, width, yerr=e, capsize=2, label=f"{_head_label(c[0])} (ours)")
        pub = [published_value(c[0], t if t.startswith("adroit/") else (t[:-4] if t.endswith(" avg") else ""))
               for t in labels]
        ax.scatter(pos, [np.nan if p is None else p for p in pub], marker="D", facecolors="none",
                   edgecolors=f"C{i}", zorder=3, label=f"{PUBLISHED_NAMES.get(c[0], c[0])} (published)")
    ex = [100 * s["expert"][t] if t in s["expert"] else np.nan for t in s["tasks"]]
    ax.scatter(x[:len(ex)], ex, marker="_", s=400, color="k", zorder=4, label="expert (ceiling)")
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel("success %")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def report_paths(results_paths, out=None) -> tuple[Path, Path]:
    """The report's Markdown and PNG files: <out>.md and <out>.png, by default report.* beside the first results
    file."""
    out = Path(out) if out else Path(results_paths[0]).with_name("report")
    return out.with_suffix(".md"), out.with_suffix(".png")


def write_report(results_paths, out=None, title: str = "Benchmark suite") -> tuple[Path, Path]:
    from mfp.demos.atomic import atomic_write_bytes

    rows = load_rows(results_paths)
    md, png = report_paths(results_paths, out)
    atomic_write_bytes(png, render_plot(rows))
    atomic_write_bytes(md, render_markdown(rows, title, plot_name=png.name).encode())
    return md, png
