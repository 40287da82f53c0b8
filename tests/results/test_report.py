"""`tune report`: one HTML file that holds every trial and opens without network access."""

import json
import re

from click.testing import CliRunner

from xtune.cli import tune
from xtune.results import search_results, write_report
from xtune.search._project import SearchSettings, write_run
from xtune.spaces import load_space

from .test_pareto import _trial


def _project(tmp_path):
    write_run(tmp_path, SearchSettings(data="generated"), load_space("small").to_dict(), None)
    for k, (score, params, flops, stages) in enumerate([(0.9, 50_000, 9e6, 3), (0.85, 10_000, 2e6, 2),
                                                        (0.7, 2_000, 5e5, 1), (0.6, 60_000, 1e7, 3)]):
        _trial(tmp_path, f"{k:04d}", score, params, int(flops), stages)
    return tmp_path


def test_the_report_holds_every_trial_and_needs_no_network(tmp_path):
    project = _project(tmp_path / "p")
    result = CliRunner().invoke(tune, ["report", "--project", str(project)])
    assert result.exit_code == 0, result.output
    page = (project / "report.html").read_text()
    data = json.loads(re.search(r'<script type="application/json" id="xtune-data">(.*?)</script>', page, re.S).group(1))
    expected = search_results(project).rows
    assert [(r["trial_id"], r["score"], r["params"]) for r in data["trials"]] == [
        (r["trial_id"], r["score"], r["params"]) for r in expected]
    for r in expected:  # and every trial is in the drawings (hover text) and the table
        assert f"trial {r['trial_id']}" in page
    # Offline: no tag loads anything (no script, style, image or frame from elsewhere); plotly.js is inside.
    markup = re.sub(r"(<script[^>]*>).*?(</script>)", r"\1\2", page, flags=re.S)  # tags only, not code in them
    assert not re.search(r"<(script|link|img|iframe|object|embed)\b[^>]*\b(src|href|data)\s*=", markup, re.I)
    assert "plotly" in page.lower() and len(page) > 1_000_000
    for section in ("Optimization history", "Accuracy against size", "Hyperband brackets", "Learning curves",
                    "Hyperparameters", "Exports", "Trials"):
        assert f"<h2>{section}</h2>" in page


def test_the_report_goes_where_it_is_asked(tmp_path):
    project = _project(tmp_path / "p")
    out = write_report(project, tmp_path / "elsewhere" / "r.html")
    assert out.is_file() and not (project / "report.html").exists()
