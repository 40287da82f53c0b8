"""The README's benchmark table, rebuilt from benchmarks/results/*.json."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parent.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _row(what, figure, baseline, ratio, goal, source):
    return f"| {what} | {figure} | {baseline} | {ratio} | {goal} | `{source}` |"


def _label_machines(out: list[str], marks: list[tuple[int, dict]]) -> None:
    """Append "(on CPU, date)" to the rows of each part that says where it ran."""
    bounds = [m[0] for m in marks[1:]] + [len(out)]
    for (first, part), last in zip(marks, bounds):
        on = part.get("measured_on")
        if not on:
            continue
        for i in range(first, last):
            what, rest = out[i][2:].split(" | ", 1)
            out[i] = f"| {what} (on {on.get('cpu')}, {str(on.get('date'))[:10]}) | {rest}"


def rows() -> list[str]:
    out = []
    if (r := _load("startup")):
        m = r["median_s"]
        out.append(_row("start-up: `tune --help` vs `import tensorflow` (median of 5)", f"{m['tune --help']:.2f} s",
                        f"{m['import tensorflow']:.2f} s", f"{r['ratio']:.3f}", "far below 1",
                        "python -m benchmarks startup"))
    if (r := _load("prepare_memory")):
        issue = [x for x in r["results"] if x["in_issue"]]
        worst = next(x for x in issue if x["input"] == r["worst"])
        out.append(_row(f"peak RSS of `tune data prepare` on {len(issue)} hostile inputs (1 GiB zip member, zip bomb "
                        "train.zip, /dev/zero link, FIFO, 1 GiB file, 196-megapixel PNG bomb): the largest "
                        f"({worst['input']}) vs the same images without it",
                        f"{worst['peak_rss_mb']:.0f} MB", f"{worst['baseline_peak_rss_mb']:.0f} MB",
                        f"{worst['ratio']:.2f}", f"< {r['goal_mb']} MB", "python -m benchmarks prepare_memory"))
        for x in r["results"]:
            if not x["in_issue"]:
                many = " x3, decoded one at a time" if x["input"].endswith("-x3") else ""
                out.append(_row(f"peak RSS of `tune data prepare` on a 169-megapixel PNG{many} (under Pillow's bomb "
                                "limit: decoded, converted to RGB) vs the same images without it",
                                f"{x['peak_rss_mb']:.0f} MB", f"{x['baseline_peak_rss_mb']:.0f} MB",
                                f"{x['ratio']:.1f}", "-", "python -m benchmarks prepare_memory"))
    if (r := _load("pipeline")):
        for s in r.get("results", []):
            out.append(_row(f"data pipeline at {s['image_size']} px: images/s delivered, first (decoding) epoch / "
                            "cached epochs, vs consumed by the seed model's training step",
                            f"{s['delivered_first_epoch_memory']:,.0f}/s / {s['delivered_cached_memory']:,.0f}/s",
                            f"{s['consumed_train_step']:,.1f}/s",
                            f"{s['ratio_first_epoch']:,.1f}x / {s['ratio_cached']:,.0f}x", "> 1",
                            "python -m benchmarks pipeline"))
    if (r := _load("search_costs")):
        marks: list[tuple[int, dict]] = []  # (first row, part): each part says where it ran
        if (t := r.get("training_loop")):
            marks.append((len(out), t))
            out.append(_row("training inside `tune search` vs bare `model.fit` (images/s, 32 px)",
                            f"{t['search_images_per_s']:,.0f}/s", f"{t['bare_fit_images_per_s']:,.0f}/s",
                            f"{t['ratio']:.3f}", t["goal"], "python -m benchmarks search_costs"))
            if "ratio_without_bn_refresh" in t:
                out.append(_row("the same, the search without the batch-norm re-estimation before each validation "
                                "(what scoring the model as export ships costs)",
                                f"{t['search_without_bn_refresh_images_per_s']:,.0f}/s",
                                f"{t['bare_fit_images_per_s']:,.0f}/s", f"{t['ratio_without_bn_refresh']:.3f}",
                                t["goal"], "python -m benchmarks search_costs"))
        if (o := r.get("search_overhead")):
            marks.append((len(out), o))
            top = max(o["overhead_s"], key=o["overhead_s"].get)
            out.append(_row(f"search time outside training epochs ({o['trials']} trials, 32 px)",
                            f"{o['overhead_share']:.1%} of {o['wall_s']:.0f} s", "-", f"largest part: {top}",
                            o["goal"], "python -m benchmarks search_costs"))
            rss = o["rss_mb_after_each_trial"]
            out.append(_row(f"RSS after each of {o['trials']} trials, in one process (`run_search`, no restarts): "
                            "last vs fifth", f"{rss[-1]:.0f} MB", f"{rss[min(4, len(rss) - 1)]:.0f} MB",
                            f"{o['rss_last_over_fifth']:.3f}", "<= 1.2", "python -m benchmarks search_costs"))
        if (k := r.get("keras_memory")):
            marks.append((len(out), k))
            rss = k["rss_mb_after_each_cycle"]
            out.append(_row(f"the cause, without xtune: RSS after each of {k['cycles']} bare Keras build + fit + "
                            "`clear_session()` + `gc.collect()` cycles: last vs fifth", f"{rss[-1]:.0f} MB",
                            f"{rss[4]:.0f} MB", f"{k['rss_last_over_fifth']:.3f}", "-",
                            "python -m benchmarks search_costs"))
        for d in (r[k] for k in ("default_command", "default_command_64px") if k in r):
            marks.append((len(out), d))
            share = d["outside_training_share"]
            out.append(_row(f"wall time with no training epoch running ({d['trials']} trials, {d['image_size']} px, "
                            "launch to end): the default command (2 workers) vs one process",
                            f"{share['default']:.1%}", f"{share['--workers 1']:.1%}",
                            f"{share['default'] / share['--workers 1']:.2f} (trials/h {d['trials_per_hour_ratio']:.2f}x)",
                            "default <= 25%" if d["image_size"] == 32 else "-",
                            "python -m benchmarks.search_costs --only default"
                            + (f" --default-sizes {d['image_size']}" if d["image_size"] != 32 else "")))
        if (m := r.get("supervised_memory")):
            marks.append((len(out), m))
            rss = m["rss_mb_after_each_trial"]
            out.append(_row(f"RSS after each of {m['trials']} trials of `tune search` (restarts its process when "
                            f"memory grows {m['recycle_mb']:.0f} MB: {m['restarts']} restart(s)): last vs fifth",
                            f"{rss[-1]:.0f} MB", f"{rss[min(4, len(rss) - 1)]:.0f} MB",
                            f"{m['rss_last_over_fifth']:.3f}", "<= 1.2", "python -m benchmarks search_costs"))
        if (b := r.get("epoch_backups")):
            marks.append((len(out), b))
            out.append(_row("per-epoch backups (mid-trial resume): search wall time with vs without",
                            f"{sum(b['with_backups_s']) / len(b['with_backups_s']):.0f} s",
                            f"{sum(b['without_backups_s']) / len(b['without_backups_s']):.0f} s",
                            f"{b['ratio']:.3f}", "close to 1", "python -m benchmarks search_costs"))
        _label_machines(out, marks)
    if (r := _load("budget")):
        p, c, q = r["plan"], r["budget_check"], r["ratio_budgeted_over_unbudgeted"]
        b, u = r["runs"]["budgeted"], r["runs"]["unbudgeted"]
        what = (f"size budget `--max-params {p['max_params']:,}` vs none (demo digits, {b['trials_total']} trials, "
                f"max {p['max_epochs']} epochs, space {p['space']}, {p['image_size']} px, seed {p['seed']})")
        out.append(_row(f"{what}: test accuracy of the exported model", f"{b['test_accuracy']:.3f}",
                        f"{u['test_accuracy']:.3f}", f"{q['test_accuracy']:.3f}", "-", "python -m benchmarks budget"))
        out.append(_row(f"{what}: parameters of the exported model (trials over the budget: "
                        f"{c['budgeted_trials_over']} of {c['budgeted_trials']} budgeted, "
                        f"{c['unbudgeted_trials_over']} of {c['unbudgeted_trials']} unbudgeted)",
                        f"{b['params']:,}", f"{u['params']:,}", f"{q['params']:.3f}",
                        f"every trial <= {p['max_params']:,}", "python -m benchmarks budget"))
        out.append(_row(f"{what}: wall time, search / export", f"{b['search_s']:.0f} s / {b['export_s']:.0f} s",
                        f"{u['search_s']:.0f} s / {u['export_s']:.0f} s",
                        f"{q['search_s']:.2f} / {q['export_s']:.2f}", "<= 1", "python -m benchmarks budget"))
    if (r := _load("quality")):
        table = r.get("table", [])
        if "entries" in r:  # rebuilt from the entries, so a re-run of one tool shows at once
            from benchmarks.quality import summarize, table_rows

            table = table_rows(summarize(r["entries"], r["budget"], r.get("sets")), r["budget"])
        for row in table:
            out.append(_row(row["what"], row["figure"], row["baseline"], row["ratio"], row.get("goal", "-"),
                            "python -m benchmarks quality"))
    if (r := _load("distributed")):
        plan, tph = r["plan"], r["trials_per_hour"]
        out.append(_row(f"trials per hour, the default (2 worker processes) vs one process ({plan['trials']}-trial "
                        f"plan, {plan['image_size']} px; 2 cores: 1 thread per worker vs 2), launch to end",
                        f"{tph['2']:,}/h", f"{tph['1']:,}/h", f"{r['ratio_2_to_1']:.2f}x", ">= 1.8",
                        "python -m benchmarks distributed"))
        if "trials_per_hour_trial_phase" in r:
            tp = r["trials_per_hour_trial_phase"]
            out.append(_row("the same, trial phase only (first trial handed out to last trial ended; without "
                            "the processes' start-up)", f"{tp['2']:,}/h", f"{tp['1']:,}/h",
                            f"{r['ratio_2_to_1_trial_phase']:.2f}x", ">= 1.8", "python -m benchmarks distributed"))
    if (r := _load("eta")):
        n = len(r["estimates"])
        worst = r["worst_relative_error_after_first_round"]
        after = [e for e in r["estimates"] if r["first_round_trials"] <= e["trials_ended"] < n
                 and e["relative_error"] is not None]
        early = [abs(e["relative_error"]) for e in after if e["truth_s"] >= 15]
        figure = "-" if worst is None else f"{worst:.0%}"
        if early and len(early) < len(after):
            figure += f" (the estimates with 15 s or more left: {max(early):.0%})"
        out.append(_row(f"the search's ETA on the demo search ({n} trials, {r['wall_s']:.0f} s): largest error of "
                        f"the estimates made after the first round ({r['first_round_trials']} trials)",
                        figure, "the time really left", "-", "within 30%", "python -m benchmarks eta"))
    if (r := _load("bn_reestimation")):
        for preset, n in dict.fromkeys((x["preset"], x["train_images"]) for x in r["results"]):
            runs = [x for x in r["results"] if (x["preset"], x["train_images"]) == (preset, n)]
            after = [next(v for k, v in x.items() if k.startswith("after, as tune export"))["test_accuracy"]
                     for x in runs]
            before = [x["before"]["test_accuracy"] for x in runs]
            b, a = sum(before) / len(before), sum(after) / len(after)
            out.append(_row(f"batch-norm re-estimation in `tune export`, preset {preset}, {runs[0]['train_images']} "
                            f"training images ({len(runs)} seeds): test accuracy after vs before",
                            f"{a:.3f}", f"{b:.3f}", f"{a / b:.2f}x", ">= 1",
                            "python -m benchmarks.bn_reestimation"))
    if (r := _load("gpu_jax")):
        card = ", ".join(dict.fromkeys(r["devices"]))
        for batch, row in r["throughput_images_per_s"].items():
            out.append(_row(f"GPU ({card}), Keras on JAX: the book's model at {r['image_size']} px, batch {batch}, "
                            "images/s mixed bfloat16 vs float32", f"{row['mixed_bfloat16']:,.0f}/s",
                            f"{row['float32']:,.0f}/s", f"{row['speedup_bf16']:.2f}x", "> 1",
                            "python -m benchmarks.gpu_jax"))
    else:
        out.append(_row("GPU throughput and search (`benchmarks/gpu_jax.py`, Keras on JAX)",
                        "not measured: no GPU was lent to the sessions that built this", "-", "-", "-",
                        "python -m benchmarks.gpu_jax"))
    return out


def _machines() -> str:
    """Each machine the results came from (CPU, cores, GPUs), once, with the dates of its runs."""
    seen: dict[tuple, dict] = {}
    machines = []
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        machines.append(data.get("machine") or {})
        # A benchmark run in parts (search_costs --only) keeps where each part ran.
        machines += [v["measured_on"] for v in data.values() if isinstance(v, dict) and "measured_on" in v]
    for m in machines:
        if not m:
            continue
        key = (m.get("cpu") or "unknown CPU", m.get("cores"), tuple(m.get("gpus") or ()))
        entry = seen.setdefault(key, {"memory_gb": None, "versions": {}, "dates": set()})
        entry["memory_gb"] = entry["memory_gb"] or m.get("memory_gb")
        entry["versions"].update(m.get("versions") or {})
        if m.get("date"):
            entry["dates"].add(m["date"][:10])
    out = []
    for (cpu, cores, gpus), e in seen.items():
        parts = [cpu] + ([f"{cores} cores"] if cores else []) + ([f"{e['memory_gb']} GB"] if e["memory_gb"] else [])
        parts.append(", ".join(gpus) or "no GPU")
        libs = ", ".join(f"{k} {v}" for k, v in e["versions"].items())
        out.append(", ".join(parts) + (f" ({libs})" if libs else "") + f", {', '.join(sorted(e['dates']))}")
    return "; ".join(out)


def table() -> str:
    lines = ["| what | figure | baseline (same run) | ratio | goal | command |", "|---|---|---|---|---|---|", *rows()]
    lines.append("")
    lines.append("Machine: " + _machines())
    return "\n".join(lines)


def update_readme(readme: Path = README) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        return
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table()}\n{END}{tail}")
