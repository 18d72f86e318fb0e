"""fedtune report: a self-contained HTML page loaded in headless Chromium (Debian's, driven
by Playwright): no console error, every plot drawn, a screenshot kept; one run and two runs
compared; a run without optional figures; damaged and unknown runs."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from fedtune.experiment import run

from .conftest import FEDTUNE, small_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("CI") != "true":  # CI installs it (.ci/run): never skip
    pytest.skip("Chromium is not installed here (apt-get install chromium)",
                allow_module_level=True)


def report(ws: Path, out: Path, *runs: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FEDTUNE, "report", *runs, "--out", str(out), "--workspace", str(ws)],
                          capture_output=True, text=True, timeout=120)


def load_in_browser(page_file: Path, screenshot: Path) -> dict[str, int]:
    """Each plot's drawn SVG layers, after loading ``page_file``; fails on a console error."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("**/*", lambda route: route.abort()
                       if not route.request.url.startswith("file:") else route.continue_())
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")
            page.wait_for_function("[...document.querySelectorAll('div.plot')].every("
                                   "e => e.querySelector('svg.main-svg'))", timeout=30_000)
            drawn = page.eval_on_selector_all(  # drawn traces: lines, bars, boxes
                "div.plot", "els => els.map(e => [e.dataset.figure, "
                "e.querySelectorAll('svg.main-svg g.trace').length])")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert errors == [], errors
    assert screenshot.stat().st_size > 10_000
    return dict(drawn)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    ws = tmp_path_factory.mktemp("report") / "ws"
    ids = [run(small_config("run.rounds=4", 'strategy.selection="carbon"', "strategy.count=2",
                            "strategy.participation_floor=0.25",
                            'energy.site_countries=["FRA", "POL"]', f'run.workspace="{ws}"')
               ).run_id,
           run(small_config("run.rounds=4", 'privacy.mode="central"',
                            "privacy.noise_multiplier=1.0", "privacy.secure_rng=false",
                            f'run.workspace="{ws}"')).run_id]
    return ws, ids


def test_one_run_renders_every_plot_in_chromium(two_runs, tmp_path) -> None:
    ws, ids = two_runs
    out = tmp_path / "one.html"
    done = report(ws, out, "last")
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "<script src=" not in text  # inlined; the browser test blocks all network
    drawn = load_in_browser(out, tmp_path / "one.png")
    assert set(drawn) == {"accuracy", "loss", "site_accuracy", "bytes", "energy",
                          "energy_per_site", "epsilon", "durations"}  # no carbon selection
    assert all(n > 0 for n in drawn.values()), drawn
    assert ids[1] in text and "Provenance" in text and "Resolved config" in text


def test_two_runs_overlaid_in_chromium(two_runs, tmp_path) -> None:
    ws, ids = two_runs
    out = tmp_path / "two.html"
    done = report(ws, out, *ids)
    assert done.returncode == 0, done.stderr
    drawn = load_in_browser(out, tmp_path / "two.png")
    assert all(n > 0 for n in drawn.values()), drawn
    assert "participation" in drawn and "epsilon" in drawn  # each run's own panel
    text = out.read_text()
    assert all(text.count(i) >= 3 for i in ids) and "overlaid" in text


def test_a_run_without_optional_figures_still_renders(tmp_path) -> None:
    ws = tmp_path / "ws"
    run(small_config("run.rounds=2", "energy.enabled=false", "evaluation.personalize_steps=0",
                     f'run.workspace="{ws}"'))
    out = tmp_path / "plain.html"
    done = report(ws, out, "last")
    assert done.returncode == 0, done.stderr
    drawn = load_in_browser(out, tmp_path / "plain.png")
    assert "epsilon" not in drawn and all(n > 0 for n in drawn.values())
    assert "no run used differential privacy" in out.read_text()


def test_damaged_and_unknown_runs_get_a_clear_error(tmp_path) -> None:
    ws = tmp_path / "ws"
    run_id = run(small_config("run.rounds=1", f'run.workspace="{ws}"')).run_id
    unknown = report(ws, tmp_path / "x.html", "nosuchrun")
    assert unknown.returncode == 2 and "match 'nosuchrun'" in unknown.stderr
    with sqlite3.connect(ws / "runs.sqlite") as db:
        db.execute("UPDATE runs SET result_json='{not json' WHERE run_id=?", (run_id,))
    damaged = report(ws, tmp_path / "x.html", run_id)
    assert damaged.returncode == 2 and "damaged" in damaged.stderr
    assert "Traceback" not in damaged.stderr + unknown.stderr
    assert not (tmp_path / "x.html").exists()
    missing = report(tmp_path / "nowhere", tmp_path / "x.html", "last")
    assert missing.returncode == 2 and "no run store" in missing.stderr


def test_a_personalized_run_draws_its_panels(tmp_path) -> None:
    ws = tmp_path / "ws"
    run(small_config("run.rounds=4", 'personalization.method="fedper"',
                     "personalization.eval_every=2", "personalization.holdout_sites=1",
                     "energy.enabled=false", f'run.workspace="{ws}"'))
    out = tmp_path / "personal.html"
    done = report(ws, out, "last")
    assert done.returncode == 0, done.stderr
    drawn = load_in_browser(out, tmp_path / "personal.png")
    assert {"personal_sites", "personal_rounds", "new_sites"} <= set(drawn)
    assert all(n > 0 for n in drawn.values()), drawn
    assert "personal models (fedper)" in out.read_text()


def test_an_equity_run_draws_its_panels(tmp_path) -> None:
    ws = tmp_path / "ws"
    first = run(small_config("run.rounds=3", "data.num_nodes=5", 'strategy.name="afl"',
                     'fairness.contribution="loo"', "fairness.audit=true",
                     'fairness.site_steps={"node-2" = 1}',
                     'fairness.site_link_mbps={"node-2" = 0.5}', 'attack.kind="free_rider"',
                     'attack.sites=["node-4"]', "energy.enabled=false",
                     f'run.workspace="{ws}"')).run_id
    second = run(small_config("run.rounds=3", "data.num_nodes=5", "screening.enabled=true",
                              'attack.kind="sign_flip"', 'attack.sites=["node-1"]',
                              "energy.enabled=false", f'run.workspace="{ws}"')).run_id
    out = tmp_path / "equity.html"
    done = report(ws, out, first, second)
    assert done.returncode == 0, done.stderr
    drawn = load_in_browser(out, tmp_path / "equity.png")
    assert {"contribution_cost", "bias_rounds", "reputation", "mixture"} <= set(drawn)
    assert all(n > 0 for n in drawn.values()), drawn
    page = out.read_text()
    assert "contribution (loo, accuracy points)" in page and "free_rider by node-4" in page
