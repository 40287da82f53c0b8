"""Rendering for the terminal: tables and lines that fit its width, and the live views.

Library code returns records and emits events; only this module turns them into
text. Every line fits the terminal (``COLUMNS``, else the terminal's width, else 80
columns): a table wraps its long column inside the cell, a trial line continues on
an indented line. On a terminal, a search keeps one live line at the bottom (the
running trial, its epoch, a bar inside a long epoch, its time left); piped output
gets plain lines only.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap

import click

from xtune._events import (
    BatchProgress,
    EpochEnded,
    ExportPhase,
    ExportStarted,
    MemoryRecycled,
    ProcessRestarted,
    SearchStarted,
    Serving,
    TrialEnded,
    TrialRetry,
    TrialStarted,
    WaitingForChief,
    WaitingForLock,
    WorkerConnected,
    WorkersStarted,
    WorkerStarted,
    WorkerWaiting,
)


def width() -> int:
    """Columns to fit: ``$COLUMNS``, else the terminal's, else 80."""
    return max(40, shutil.get_terminal_size((80, 24)).columns)


def shorthand(values: dict) -> str:
    from xtune.spaces import MiniXceptionConfig

    try:
        return MiniXceptionConfig.from_values(values or {}).shorthand()
    except (ValueError, TypeError):
        return "?"


def duration(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v) for v in value)
    return str(value)


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


def fit_fields(fields: list, limit: int | None = None, indent: str = "  ", sep: str = "  ") -> list[str]:
    """Join ``fields`` with ``sep`` into lines of at most ``limit`` columns (continued indented).

    A field is never broken (a command or a path stays whole, to be copied); a list
    field is free text whose words are joined by one space and may break between.
    """
    limit = limit or width()
    tokens = []
    for f in fields:
        if not f:
            continue
        if isinstance(f, (list, tuple)):
            tokens += [(w, sep if i == 0 else " ") for i, w in enumerate(f)]
        else:
            tokens.append((f, sep))
    lines, current = [], ""
    for text, before in tokens:
        candidate = text if not current else f"{current}{before}{text}"
        if len(candidate) <= limit or not current:
            current = candidate
            continue
        lines.append(current)
        current = indent + text
    if current:
        lines.append(current)
    return lines


def say(*fields: str, sep: str = " ", indent: str = "  ", err: bool = False) -> None:
    """Echo a sentence made of ``fields``, broken between fields to fit the terminal."""
    for line in fit_fields(list(fields), indent=indent, sep=sep):
        click.echo(line, err=err)


def echo_table(rows: list[dict], columns: list[str] | None = None, wrap: str | None = None,
               detail: tuple[str, ...] = (), err: bool = False) -> None:
    """Print records as an aligned table that fits the terminal (the only table renderer).

    Args:
        rows: One dict per row.
        columns: Which keys, in order (default: the first row's).
        wrap: The column whose cells wrap (over several lines) when the table is too wide.
        detail: Columns that, one by one in this order while the table is too wide,
            leave it for an indented line under each row ("best ep 2  3x16*2 sep ...").
    """
    if not rows:
        return
    columns = list(columns or rows[0])
    limit = width()

    def widths_of(cols):
        return [max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in cols]

    def total(ws):
        return sum(ws) + 2 * (len(ws) - 1)

    moved: set[str] = set()
    for c in detail:  # in the caller's order, until the rest fits
        if total(widths_of([k for k in columns if k not in moved])) <= limit:
            break
        if c in columns:
            moved.add(c)
    below = [c for c in columns if c in moved]
    columns = [c for c in columns if c not in moved]
    widths = widths_of(columns)
    if wrap in columns and total(widths) > limit:
        k = columns.index(wrap)
        widths[k] = max(limit - (total(widths) - widths[k]), len(wrap), 12)
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(), err=err)
    for row in rows:
        values = [cell(row.get(c)) for c in columns]
        parts = [textwrap.wrap(v, w, break_on_hyphens=False) or [""] if len(v) > w else [v] for v, w in zip(values, widths)]
        for line in range(max(len(p) for p in parts)):
            click.echo("  ".join((p[line] if line < len(p) else "").ljust(w) for p, w in zip(parts, widths)).rstrip(),
                       err=err)
        extra = [f"{c} {cell(row.get(c))}" if c != wrap else cell(row.get(c)) for c in below if row.get(c) is not None]
        for text in fit_fields(extra, limit - 4) if extra else []:
            click.echo("    " + text, err=err)


# -- a search, live ---------------------------------------------------------------------------------


class SearchView:
    """Renders a search's events: one block per trial (and per epoch with --verbose).

    Args:
        verbosity: 0 (the summary only), 1 (a block per trial), 2 (and per epoch).
        live: Keep a live line on the terminal (default: when stdout is a terminal).
    """

    def __init__(self, verbosity: int = 1, live: bool | None = None):
        from xtune.search import SearchProgress

        self.verbosity = verbosity
        self.live = sys.stdout.isatty() if live is None else live
        self.progress = SearchProgress()
        self.objective = "val_accuracy"
        self.starts: dict[str, TrialStarted] = {}
        self._live_text = ""

    def __call__(self, event) -> None:
        self.progress.update(event)
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None:
            handler(event)

    # Output, around the live line.
    def echo(self, text: str = "", err: bool = False) -> None:
        if self._live_text:
            sys.stdout.write("\r\033[K")
            self._live_text = ""
        click.echo(text, err=err)

    def text(self, prose: str, err: bool = False, indent: str = "  ") -> None:
        """Echo a sentence, broken between words to fit the terminal."""
        lead = prose[: len(prose) - len(prose.lstrip())]
        for line in fit_fields([prose.split()], limit=width() - len(lead), indent=indent):
            self.echo(lead + line, err=err)

    def lines(self, fields: list, err: bool = False, sep: str = "  ") -> None:
        for line in fit_fields(fields, sep=sep):
            self.echo(line, err=err)

    def _show_live(self, text: str) -> None:
        if not (self.live and self.verbosity):
            return
        text = text[: width() - 1]
        sys.stdout.write("\r\033[K" + text)
        sys.stdout.flush()
        self._live_text = text

    @staticmethod
    def _tag(event) -> str:
        return f" [{event.worker}]" if getattr(event, "worker", None) else ""

    # Events.
    def _on_search_start(self, e: SearchStarted) -> None:
        self.objective = e.settings["objective"]
        for note in e.notes:
            self.text(f"Warning: {note}", err=True)
        if self.verbosity:
            what = "Resuming" if e.resumed else "Starting"
            done = f", {e.completed + e.failed} done" if e.resumed else ""
            self.lines([f"{what} {e.project}:", f"{e.plan['total_trials']} trials in {len(e.plan['brackets'])} "
                        f"Hyperband bracket(s){done}", f"({self._where(e)})"], sep=" ")

    def _on_serving(self, e: Serving) -> None:
        self.text(f"Serving the search on {e.host}:{e.port}. On each worker machine, with {e.project} mounted "
                  "(any path), run:")
        self.echo(f"  tune worker --chief {e.address} --project {quote(e.project)}")

    def _on_workers_started(self, e: WorkersStarted) -> None:
        if self.verbosity:
            self.lines(["Workers: " + ", ".join(f"{w['worker']} (pid {w['pid']})" for w in e.workers) + ";",
                        f"chief pid {e.chief['pid']} on {e.chief['address']}"])

    def _on_process_restart(self, e: ProcessRestarted) -> None:
        if e.reason == "ended itself to release memory":
            return  # said by the recycle event
        if e.name == "search":
            self.text(f"The search process died ({e.reason}); resuming from the last saved epoch.", err=True)
            return
        during = f" during trial {e.trial_id}" if e.trial_id else ""
        self.text(f"{e.name} (pid {e.old_pid}) died ({e.reason}){during}; restarted as pid {e.pid}"
                  + ("; the trial resumes at its last saved epoch" if during else ""), err=True)

    def _on_recycle(self, e: MemoryRecycled) -> None:
        who = f"{e.worker}: " if e.worker else ""
        self.text(f"{who}Continuing in a fresh process to release memory (memory grew by {e.grown_mb:.0f} MB "
                  "since the first trial of this process).")

    def _on_waiting_for_lock(self, e: WaitingForLock) -> None:
        self.text(f"Waiting for pid {e.pid} on {e.host} to stop (a search process whose parent was killed); "
                  f"at most {e.seconds:.0f}s", err=True)

    def _on_worker_start(self, e: WorkerStarted) -> None:
        if self.verbosity:
            self.text(f"{e.worker}: running trials of {e.project} for the chief at {e.chief}")

    def _on_waiting_for_chief(self, e: WaitingForChief) -> None:
        if self.verbosity:
            self.text(f"Waiting for the chief at {e.chief} (start it with: tune search --project ... --chief)")

    def _on_worker_ready(self, e: WorkerConnected) -> None:
        if self.verbosity:
            replicas = f", {e.replicas} replicas" if e.replicas > 1 else ""
            self.text(f"{e.worker}: connected ({', '.join(e.devices['gpus']) or 'CPU'}, {e.devices['policy']}{replicas})")

    def _on_waiting(self, e: WorkerWaiting) -> None:
        if self.verbosity >= 2:
            self.text(f"    {e.worker} waits: the open brackets wait for other workers' trials")

    def _on_trial_start(self, e: TrialStarted) -> None:
        self.starts[e.trial_id] = e
        if self.verbosity:
            epochs = f"epochs {e.resumed_at or e.initial_epoch}->{e.epochs}"
            self._show_live(f"trial {e.trial_id}{self._tag(e)} {epochs} ...")

    def _on_batch(self, e: BatchProgress) -> None:
        if not (self.live and self.verbosity):
            return
        bar_width = 16
        filled = int(bar_width * e.step / max(e.steps, 1))
        left = self.progress.trial_eta(e.trial_id) if e.trial_id else None
        eta = f"  ~{duration(left)} left in trial" if left is not None else ""
        self._show_live(f"trial {e.trial_id}{self._tag(e)} epoch {e.epoch}/{e.epochs} "
                        f"[{'#' * filled}{'.' * (bar_width - filled)}] {e.step}/{e.steps}{eta}")

    def _on_epoch_end(self, e: EpochEnded) -> None:
        if self.verbosity >= 2:
            metrics = "  ".join(f"{k} {v:.4f}" for k, v in e.logs.items())
            seconds = f"({e.seconds:.1f}s)" if e.seconds is not None else ""
            self.lines([f"    trial {e.trial_id} epoch {e.epoch}/{e.epochs}{self._tag(e)}", *metrics.split("  "),
                        seconds])
        left = self.progress.trial_eta(e.trial_id) if e.trial_id else None
        eta = f"  ~{duration(left)} left in trial" if left is not None else ""
        self._show_live(f"trial {e.trial_id}{self._tag(e)} epoch {e.epoch}/{e.epochs} done{eta}")

    def _on_trial_retry(self, e: TrialRetry) -> None:
        if self.verbosity:
            self.text(f"trial {e.trial_id} failed ({e.reason}); it will run once more")

    def _on_trial_end(self, e: TrialEnded) -> None:
        if not self.verbosity:
            return
        start = self.starts.get(e.trial_id)
        p = self.progress
        where = f"b{start.bracket} r{start.round}" if start else ""
        epochs = f"{start.initial_epoch}->{start.epochs}ep" if start else ""
        result: list[str | list[str]]  # a list field is free text (fit_fields)
        if e.status == "COMPLETED":
            result = [f"{self.objective} {e.score:.4f}"]
        else:  # the reason is free text: it may break between words
            result = [["FAILED:", *(e.reason or "unknown").split()]]
        best = f"best {p.best:.4f}" if p.best is not None else "best -"
        eta = p.eta()
        times = duration(p.elapsed) + (f", ~{duration(eta)} left" if eta is not None else "")
        self.lines([f"trial {e.trial_id}{self._tag(e)}", f"{p.ended}/{p.total}", where, epochs, *result, best,
                    shorthand(start.values) if start else "", times])

    @staticmethod
    def _where(e: SearchStarted) -> str:
        if e.workers:
            gpus = [w["gpus"] for w in e.workers if w.get("gpus")]
            threads = e.workers[0].get("threads")
            what = f"GPUs {' | '.join(gpus)}" if gpus else "CPU" + (f", {threads} thread(s) each" if threads else "")
            auto = e.workers[0].get("auto")
            why = f"; chosen for {auto}, --workers 1 for one process" if auto else ""
            at_once = f"{len(e.workers)} trials at once" if len(e.workers) > 1 else "1 worker"
            return f"{at_once}: {what}{why}"
        if e.devices is None:
            return "served to workers"
        return f"{', '.join(e.devices['gpus']) or 'CPU'}, {e.devices['policy']}"


def echo_outcome(outcome, view: SearchView | None = None) -> None:
    """The end of `tune search`: finished, interrupted or stopped, and what to do next."""
    echo = view.echo if view is not None else click.echo
    project = quote(outcome.project)
    if outcome.status == "already finished":
        for note in outcome.notes:  # repairs made (no SearchStarted showed them: nothing was started)
            echo(f"Warning: {note}", err=True)
        for line in fit_fields([f"The search in {outcome.project} is finished", f"({outcome.completed} trials "
                                f"completed, {outcome.failed} failed).", f"See: tune results --project {project}"]):
            echo(line)
        return
    resume = outcome.resume or f"tune search --project {project}"
    if outcome.status == "interrupted":
        where = ""
        if outcome.interrupted_trial:
            t = outcome.interrupted_trial
            where = f" during trial {t['trial_id']} ({t['epochs_saved']} of {t['epochs']} epochs saved)"
        for line in fit_fields([f"Interrupted{where}.", f"Resume with: {resume}"]):
            echo(line, err=True)
        return
    if outcome.status == "stopped":
        for line in fit_fields([f"Stopped: {outcome.message}.", f"Fix the cause, then resume with: {resume}"]):
            echo(line, err=True)
        return
    echo(f"Search finished: {outcome.completed + outcome.failed} trials ({outcome.completed} completed, "
         f"{outcome.failed} failed).")
    if outcome.best:
        b = outcome.best
        for line in fit_fields([f"Best: trial {b['trial_id']} with {b['score']:.4f}:", shorthand(b["values"])]):
            echo(line)
    for line in fit_fields([f"Next: tune results --project {project}", f"|  tune export --project {project}"]):
        echo(line)


def echo_plan(plan, stored=None) -> None:
    """The plan, bracket by bracket; with ``stored`` (a search's plan so far), what an extension adds."""
    click.echo(f"Hyperband plan for --max-trials {plan.max_trials} --max-epochs {plan.max_epochs} --factor {plan.factor}:")
    click.echo(f"{plan.num_brackets} bracket(s) per iteration, {plan.iterations} iteration(s) "
               f"({len(plan.brackets)} bracket(s) in all)")
    kept = len(stored.brackets) if stored is not None else len(plan.brackets)
    rows = []
    for i, b in enumerate(plan.brackets):
        rounds = "  ".join(f"{r.trials}x{r.epochs}ep" for r in b.rounds)
        rows.append({"iteration": b.iteration + 1, "bracket": b.number, "rounds (trials x epochs)": rounds,
                     "trials": b.trials, "epochs trained": b.epochs, **({"": "new"} if i >= kept else {})})
    echo_table(rows, ["iteration", "bracket", "rounds (trials x epochs)", "trials", "epochs trained"]
               + ([""] if kept < len(plan.brackets) else []), wrap="rounds (trials x epochs)")
    if stored is not None and kept < len(plan.brackets):
        click.echo()
        say(f"This extends the search's plan of {stored.total_trials} trials:", f"{len(plan.brackets) - kept} new "
            f"bracket(s), {plan.total_trials - stored.total_trials} more trials; the trials done are kept.")
    click.echo()
    click.echo(f"total trials:           {plan.total_trials} (of at most {plan.max_trials})")
    click.echo(f"distinct architectures: {plan.architectures}")
    click.echo(f"total epochs:           {plan.total_epochs:,} = {plan.full_trainings:.1f}x one "
               f"{plan.max_epochs}-epoch training")


# -- an export ---------------------------------------------------------------------------------


class ExportView:
    """Renders export events: what is trained, one line per epoch, each phase."""

    def __init__(self, verbose: bool, err: bool):
        self.verbose = verbose
        self.err = err

    def __call__(self, e) -> None:
        if not self.verbose:
            return
        if isinstance(e, ExportStarted):
            what = f"trial {e.trial_id}" if e.name == "searched" else f"preset {e.name}"
            how = f"retraining {e.epochs} epoch(s) on {e.train_on}" if e.retrain else "its best-epoch checkpoint"
            for line in fit_fields([f"Exporting {what}", f"({shorthand(e.config)}):", how, f"-> {e.out}"]):
                click.echo(line, err=self.err)
        elif isinstance(e, EpochEnded):
            logs = "  ".join(f"{k} {v:.4f}" for k, v in e.logs.items() if k != "epoch")
            for line in fit_fields([f"  epoch {e.epoch}/{e.epochs}", logs, f"({e.seconds:.1f}s)"], indent="    "):
                click.echo(line, err=self.err)
        elif isinstance(e, ExportPhase) and e.phase != "data":
            for line in fit_fields([e.message.split()], limit=width() - 2, indent="  "):
                click.echo("  " + line, err=self.err)


def quote(text) -> str:
    """``text`` as a shell word (paths with spaces in the "Next:" hints)."""
    import shlex

    return shlex.quote(str(text))
