"""Render the reproduction report: ``README.md`` from the sections' JSON, figures as PNG.

Rendering is a pure function of the saved sections, so a test can check that the committed
README was generated from the committed data (and the data by the current code).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

VERDICT_MARK = {"reproduced": "✅ reproduced", "partly": "🟡 partly reproduced", "not reproduced": "❌ not reproduced"}
COMMAND = "python -m metainf_core reproduce --out docs/results"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: dict[str, Any]) -> str:
    head = "| " + " | ".join(_cell(c) for c in table["columns"]) + " |"
    rule = "|" + "|".join("---" for _ in table["columns"]) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table["rows"]]
    return "\n".join([f"*{table['title']}*", "", head, rule, *body])


def number(section: dict[str, Any]) -> int:
    """The experiment's number in issue 6 (keys are ``e<N>-name``)."""
    return int(section["key"].split("-")[0][1:])


LARGER_SCALES = ("medium", "paper")  # rendered under the report-scale part of each experiment, in this order


def figure_path(section: dict[str, Any], spec: dict[str, Any]) -> str:
    scale = f".{section['scale']}" if section.get("scale") in LARGER_SCALES else ""
    return f"figures/{section['key']}{scale}-{spec['name']}.png"


def _seeds(config: dict[str, Any]) -> str:
    seeds = config.get("seeds", [config.get("seed", 0)])
    return ", ".join(str(s) for s in seeds)


def _data(config: dict[str, Any]) -> str:
    if config.get("arch") == "mlp-synthetic":
        return "synthetic 2-D clusters (TLXML B.1), 3-way"
    if "dataset" in config:
        return f"{config['dataset']} ({config['ways']}-way)"
    return ", ".join(f"{d} ({w}-way)" for d, w in config["datasets"])


def _train_tasks(config: dict[str, Any]) -> str:
    m = config["train_tasks"]
    return ", ".join(f"{v:,}" for v in m) if isinstance(m, list) else f"{m:,}"


def scale_heading(s: dict[str, Any]) -> str:
    """The sub-heading of a medium- or paper-scale part: networks (filters, parameter counts, from the
    runs; per dataset where a learner's network differs between datasets) and M."""
    nets = s.get("networks") or {}
    names = {"maml": "MAML", "protonet": "ProtoNet", "proximal-maml": "proximal MAML"}

    def name(key: str, n: dict[str, Any]) -> str:
        algo = key.split(" ")[0]
        return f"{names.get(algo, algo)} on {n['dataset']}" if "dataset" in n else names.get(algo, algo)

    text = ", ".join(f"{n['arch']} {name(a, n)} ({n['filters']} filters, {n['num_parameters']:,} parameters)" for a, n in nets.items())
    return f"### {s.get('scale', 'medium').capitalize()} scale: {text or 'conv nets'}, M = {_train_tasks(s['config'])}"


medium_heading = scale_heading  # the name before the paper scale


def _tested_larger(*larger: dict[str, Any] | None) -> str:
    """What became of a small-scale verdict (and its "our networks are smaller" hypothesis) at the larger
    scales that were run: appended to its row of the verdict table."""
    done = [f"{x.get('scale', 'medium')} scale: {x['verdict']['label']}" for x in larger if x is not None]
    return f" — at {'; at '.join(done)} ({'rows' if len(done) > 1 else 'row'} below)" if done else ""


def render_section(number: int, s: dict[str, Any] | None, figures: set[str], medium: dict[str, Any] | None = None,
                   paper: dict[str, Any] | None = None) -> str:  # fmt: skip
    """One experiment: its report-scale part (``s``) and, when given, its medium- and paper-scale
    parts, each under a sub-heading."""
    larger = [x for x in (medium, paper) if x is not None]
    head = s or (larger[0] if larger else None)
    assert head is not None
    parts = [f"## {number}. {head['title']}", ""]
    if s is not None:
        parts += [_body(s, figures, "", f"**Verdict: {VERDICT_MARK[s['verdict']['label']]}** — {s['verdict']['reason']}.")]
    for x, scale in ((medium, "medium"), (paper, "paper")):
        if x is not None:
            parts += [scale_heading({"scale": scale, **x}), "", _body(x, figures, f" --scale {scale}",
                                                                     f"**Verdict at {scale} scale: {VERDICT_MARK[x['verdict']['label']]}** — {x['verdict']['reason']}.")]
    return "\n".join(parts)


def _body(s: dict[str, Any], figures: set[str], scale_flag: str, verdict_line: str) -> str:
    env = s["environment"]
    parts = [
        verdict_line,
        "",
        f"**Paper.** {s['paper']}",
        "",
    ]
    for table in s["tables"]:
        parts += [markdown_table(table), ""]
    for spec in s["figures"]:
        path = figure_path(s, spec)
        parts += [f"![{spec['title']}]({path})" if path in figures else f"*(figure {spec['title']!r} not drawn: no PNG exporter on the generating machine)*", ""]
    parts += ["**Scale reductions.** " + "; ".join(s["reductions"]) + ".", ""]
    parts += [
        f"<sub>Command: `{COMMAND}{scale_flag} --only {s['key']}` · data: {s.get('data') or _data(s['config'])} · "
        f"seeds: {s.get('seeds_text') or _seeds(s['config'])} · "
        f"hardware: {env['cpu']} ({env['cores']} cores), torch {env['torch']} · runtime {s['seconds']:.0f} s, plus "
        f"{s.get('train_seconds', 0):.0f} s of training for the {s.get('runs_used', 0)} runs it uses ({s.get('runs_trained', 0)} trained in "
        "this call; cached influence fits and diagnostics reused when present) · "
        f"code {env['commit']} · {env['date']}</sub>",
        "",
    ]
    return "\n".join(parts)


def _pm(pair: Sequence[float], digits: int) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def _ours(values: Sequence[float], digits: int) -> str:
    """Mean ± sd (n) over our seeds; one value alone as it is."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    a = np.asarray(values, dtype=np.float64)
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1):.{digits}f} (n = {len(a)})"


def render_paper_rows(rows: Sequence[dict[str, Any]]) -> str:
    """TLXML Tables 9/11 rows at the paper's settings (``rows.collect``): progress, our figures beside the paper's, verdicts."""
    from metainf_core.reproduce.rows import row_verdict  # the rule quoted below is its docstring

    lines = [
        "## Noise tasks at the paper's own settings (TLXML Tables 9 and 11)",
        "",
        "Run by `python -m metainf_core reproduce --scale paper --only e2-noise --rows ROW[,ROW] --seeds 0[,1,…]`; each run folder "
        "(weights, Adam state, tasksets, meta, `row.json`) is committed under `paper/<row>/seed<k>/` and resumes where it stopped.",
        "",
        "**Verdict rule, fixed before the numbers:** " + " ".join(row_verdict.__doc__.split()),
        "",
        "| row | paper | training | test accuracy (ours / paper) | training accuracy (ours / paper) | truncation k (mean self-rank) "
        "| proper tests of 128 (ours / paper) | z (ours / paper) | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for r in rows:
        row, res = r["row"], r["results"]
        done = ", ".join(f"seed {st['seed']}: {st['steps_done']:,} / {st['steps']:,}" for st in r["status"])
        ks = ", ".join(f"{x['truncation']:,} ({x['mean_self_rank']:.1f})" for x in res) or "—"
        trained = [st["test_accuracy"] for st in r["status"] if "test_accuracy" in st]
        accuracy = _ours([x["test_accuracy"] for x in res], 3) if res else (
            f"{_ours(trained, 3)}, fit pending" if trained else "—")  # a finished training's accuracy before its fit
        lines.append(
            f"| {row['key']} ({row['train_tasks']:,} / {row['noise_tasks']} noise) | {row['table']} | {done} "
            f"| {accuracy} / {_pm(row['accuracy'], 3)} | {_ours([x['train_accuracy'] for x in res], 3)} / {_pm(row['train_accuracy'], 3)} | {ks} "
            f"| {_ours([x['noise']['proper'] for x in res], 1)} / {_pm(row['proper'], 1)} "
            f"| {_ours([x['noise']['z'] for x in res], 1)} / {_pm(row['z'], 1)} | {r['verdict']['label']}: {_cell(r['verdict']['reason'])} |"
        )
        if res and res[0]["differences"] not in notes:
            notes.append(res[0]["differences"])
    for diff in notes:
        lines += ["", "Where the runs differ from the paper's text: " + "; ".join(diff) + "."]
    checks = [c for r in rows for c in r.get("batch_norm", [])]
    if checks:
        lines += ["", "**Training accuracy with running batch-norm statistics** (`scripts/paper_row_batch_norm.py`: the same weights, "
                  "statistics gathered over the training tasks' sets, evaluated as `model.eval()` does; normal / noise tasks):"]  # fmt: skip
        for c in checks:
            own, cum, ema = c["own_statistics"], c["cumulative"], c["ema"]
            lines.append(
                f"- {c['row']} seed {c['seed']}: each set's own statistics (how it trained) {own['train']:.3f} ({own['train_normal']:.3f} / "
                f"{own['train_noise']:.3f}); running, averaged over all sets {cum['train']:.3f} ({cum['train_normal']:.3f} / {cum['train_noise']:.3f}); "
                f"running, momentum 0.1 {ema['train']:.3f} ({ema['train_normal']:.3f} / {ema['train_noise']:.3f}); the paper's "
                f"{c['paper_train_accuracy'][0]:.3f} means noise-task accuracy ≈ {c['paper_implied_noise_accuracy_if_normal_as_ours']:.2f} "
                f"if its normal tasks were fit as ours. Test accuracy {own['test']:.3f} / {cum['test']:.3f} / {ema['test']:.3f}."
            )  # fmt: skip
    return "\n".join(lines + [""])


def render_readme(sections: Sequence[dict[str, Any]], figures: set[str], medium: Sequence[dict[str, Any]] = (),
                  paper: Sequence[dict[str, Any]] = (), paper_rows: Sequence[dict[str, Any]] = (),
                  dataset_checks: Sequence[dict[str, Any]] = ()) -> str:  # fmt: skip
    """The whole report; ``figures`` holds the PNG paths (relative to the report) that exist;
    ``medium`` and ``paper`` the medium- and paper-scale sections, shown after the report-scale ones
    of the same experiment (and each with a row of its own in the verdict table); ``paper_rows`` the
    TLXML Table 9/11 rows run at the paper's settings (``rows.collect``), a section of their own;
    ``dataset_checks`` the medium noise setting rerun on another dataset (``dataset_check.collect``)."""
    small = {s["key"]: s for s in sections}
    large = {s["key"]: s for s in medium}
    largest = {s["key"]: s for s in paper}
    keys = sorted(small.keys() | large.keys() | largest.keys(), key=lambda k: int(k.split("-")[0][1:]))
    verdicts = []
    for key in keys:
        for s, suffix in ((small.get(key), ""), (large.get(key), " (medium scale)"), (largest.get(key), " (paper scale)")):
            if s is not None:
                why = s["verdict"]["reason"] + (_tested_larger(large.get(key), largest.get(key)) if s is small.get(key) else "")
                verdicts.append(f"| {number(s)} | {s['title']}{suffix} | {VERDICT_MARK[s['verdict']['label']]} | {_cell(why)} |")
    head = [
        "# Reproduction report: the papers' claims measured on our data",
        "",
        f"Generated by `{COMMAND}` (add `--only KEY` for one experiment); do not edit by hand — "
        "`tests/test_reproduce.py` re-renders this file from `data/*.json` and regenerates the smallest experiment.",
        "Every number below comes from the JSON in `data/`, written by the code in `metainf_core/reproduce/`.",
        "Each experiment runs on 2 CPU cores; the reductions of scale are listed under each section.",
        "",
        "| # | experiment | verdict | why |",
        "|---|---|---|---|",
        *verdicts,
        "",
    ]
    tail = [render_paper_rows(paper_rows)] if paper_rows else []
    if dataset_checks:
        from metainf_core.reproduce.dataset_check import render as render_dataset_checks

        tail.append(render_dataset_checks(list(dataset_checks), large.get("e2-noise")))
    return "\n".join(head + [render_section(int(k.split("-")[0][1:]), small.get(k), figures, large.get(k), largest.get(k)) for k in keys] + tail)


def _figure(spec: dict[str, Any]):
    import plotly.graph_objects as go

    if spec.get("kind") == "bar":  # grouped bars (e8's LDS per method and measurement)
        from metainf_core.figures import grouped_bars

        return grouped_bars(spec)

    fig = go.Figure()
    for series in spec["series"]:
        err = series.get("error")
        reference = series["name"] == "random"  # the chance line of a detection curve
        fig.add_trace(go.Scatter(x=series["x"], y=series["y"], name=series["name"], mode="lines" if reference else spec.get("mode", "lines+markers"),
                                 line=dict(dash="dash", color="grey") if reference else None,
                                 error_y=dict(type="data", array=err, visible=True) if err else None))  # fmt: skip
    if "hline" in spec:
        fig.add_hline(y=spec["hline"], line_dash="dot", line_color="grey")
    fig.update_layout(title=spec["title"], xaxis_title=spec["x_title"], yaxis_title=spec["y_title"], template="plotly_white",
                      width=760, height=420, margin=dict(l=60, r=20, t=60, b=50))  # fmt: skip
    if spec.get("log_x"):
        fig.update_xaxes(type="log")
    return fig


FIGURE_TIMEOUT_S = 120.0  # one PNG takes ~1 s; kaleido's Chromium has been seen to hang for ever


def _png(fig: Any, timeout: float = FIGURE_TIMEOUT_S) -> bytes:
    """``plotly.io.to_image`` in a daemon thread, so a hung exporter ends the export (TimeoutError)
    instead of the whole ``reproduce`` run; the thread is left to the interpreter's exit."""
    import threading

    import plotly.io as pio

    result: dict[str, Any] = {}

    def export() -> None:
        try:
            result["png"] = pio.to_image(fig, format="png", scale=2)
        except Exception as e:  # noqa: BLE001 - re-raised in the caller
            result["error"] = e

    worker = threading.Thread(target=export, daemon=True, name="figure-export")
    worker.start()
    worker.join(timeout)
    if "error" in result:
        raise result["error"]
    if "png" not in result:
        raise TimeoutError(f"the PNG exporter (kaleido) did not answer in {timeout:g} s")
    return result["png"]


def write_figures(sections: Sequence[dict[str, Any]], out: Path, timeout: float = FIGURE_TIMEOUT_S) -> tuple[set[str], str | None]:
    """PNG of every figure via Plotly + kaleido (Chromium from ``$BROWSER_PATH`` or /usr/bin/chromium);
    returns the paths written and, when no PNG could be made (no exporter, or none within
    ``timeout`` s a figure), why."""
    os.environ.setdefault("BROWSER_PATH", "/usr/bin/chromium")
    written: set[str] = set()
    try:
        for s in sections:
            for spec in s["figures"]:
                path = figure_path(s, spec)
                (out / path).parent.mkdir(parents=True, exist_ok=True)
                png = _png(_figure(spec), timeout)
                tmp = out / (path + ".tmp")
                tmp.write_bytes(png)
                tmp.replace(out / path)
                written.add(path)
    except Exception as e:  # noqa: BLE001 - no exporter (kaleido/Chromium): the report says so
        return written, f"{type(e).__name__}: {e}".splitlines()[0]
    return written, None
