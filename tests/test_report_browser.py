"""The HTML report as a person sees it: rendered in headless Chromium, points counted, screenshot saved."""

import shutil
import subprocess
from pathlib import Path

import pytest
from optuna.trial import TrialState

from kdnas.readers.report import write_report

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=10000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_report_renders_every_student_and_teacher_in_chromium(searched, tmp_path):
    config, study = searched
    page = write_report(study, tmp_path / "report", "accuracy", latency_budget_ms=1.0)["html"]
    dom = _chromium("--dump-dom", page.as_uri()).stdout
    pareto = dom[dom.index('id="pareto"') : dom.index('id="hypervolume"')]
    completed = len(study.get_trials(states=(TrialState.COMPLETE,)))
    teachers = len(study.user_attrs["teachers"])
    assert pareto.count('class="point"') == completed + teachers
    assert "Pareto front" in pareto and "budget 1.0 ms" in pareto
    hypervolume = dom[dom.index('id="hypervolume"') :]
    assert hypervolume.count('class="point"') >= len(study.trials)

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    screenshot.unlink(missing_ok=True)
    _chromium("--window-size=1300,2200", f"--screenshot={screenshot}", page.as_uri())
    assert screenshot.is_file() and screenshot.stat().st_size > 20_000
