"""End to end in a real browser: headless Debian chromium uploads two images of a study and reads the results.

``make test-browser`` installs chromium and playwright-core (tests/browser/setup.sh) and runs this; under a
plain ``make test`` it is skipped, with the reason, where they are absent. The screenshot of the result page
is kept in pytest's tmp dir (path printed with ``-s``) for a person to look at.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from chexfusion.data.cxr_lt import read_cxr_lt
from chexfusion.inference import load_predictor
from chexfusion.serve import create_app
from chexfusion.serve.background import serve_in_background

HERE = Path(__file__).resolve().parent
CHROMIUM = Path("/usr/bin/chromium")
DRIVER = HERE / "drive.mjs"
PLAYWRIGHT = HERE / "node_modules" / "playwright-core" / "package.json"


def _missing() -> str | None:
    if shutil.which("chromium") is None or not CHROMIUM.exists():
        return "Debian chromium is not installed (make test-browser installs it)"
    if shutil.which("node") is None:
        return "node is not installed (make test-browser installs it)"
    if not PLAYWRIGHT.exists():
        return "playwright-core is not in tests/browser/node_modules (make test-browser installs it)"
    return None


pytestmark = [pytest.mark.browser, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def frontal_and_lateral(data: Path) -> list[tuple[Path, str]]:
    """Two images of one study, a frontal and a lateral one, from any split of the demo data."""
    for split in ("test.csv", "development.csv", "train.csv"):
        frame = read_cxr_lt(data / split, classes=[]).frame
        for _, rows in frame.groupby("study_id", sort=False):
            views = list(rows["view"])
            if "frontal" in views and "lateral" in views:
                frontal = rows["fpath"].iloc[views.index("frontal")]
                lateral = rows["fpath"].iloc[views.index("lateral")]
                return [(data / frontal, "frontal"), (data / lateral, "lateral")]
    raise AssertionError(f"no study with a frontal and a lateral image in {data}")


def test_upload_two_views_read_findings_and_see_a_heat_map(tiny_stage2, tiny_data, tmp_path):
    """The frontal image's view is set; the lateral JPEG is left on auto, which the page says it scores as
    unknown (a JPEG carries no view), before and after the analysis."""
    (frontal, _), (lateral, _) = frontal_and_lateral(tiny_data)
    images = [(frontal, "frontal"), (lateral, "auto")]
    predictor = load_predictor(tiny_stage2, "cpu")
    app = create_app(predictor)
    screenshot = tmp_path / "result.png"
    with serve_in_background(app) as url:
        done = subprocess.run(["node", str(DRIVER), url, str(screenshot), *[f"{p}={v}" for p, v in images]],
                              capture_output=True, text=True, timeout=240, cwd=HERE)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"screenshot: {screenshot}")

    assert report["state"] == "done", report.get("error")
    assert "stage2" in report["run_info"] and report["rows"] == 2
    assert report["classes_field_visible"] is False  # a learned-query run scores only its own classes
    # the page lists every class, most probable first, with the numbers the API gives for the same upload
    with TestClient(app) as client:
        files = [("files", (p.name, p.read_bytes())) for p, _ in images]
        api = client.post("/api/predict", files=files, data={"views": [v for _, v in images]}).json()
    expected = [(f["class"], f["group"]) for f in api["study"]["findings"]]
    assert [(f["class"], f["group"]) for f in report["findings"]] == expected
    assert [f["probability"] for f in report["findings"]] == pytest.approx(
        [f["probability"] for f in api["study"]["findings"]], abs=1e-12)
    assert report["findings"][0]["shown"] == f"{100 * api['study']['findings'][0]['probability']:.1f}%"
    # choosing a finding shows its heat map over both images
    third = expected[2][0]
    assert report["selected"] == third and report["selected_items"] == [third]
    assert [h["image"] for h in report["heatmaps"]] == [0, 1]
    assert all(h["painted"] == h["width"] * h["height"] > 0 for h in report["heatmaps"])
    assert report["previews_loaded"] == [True, True]
    assert "frontal view (set by you)" in report["captions"][0]
    assert "unknown view (not given)" in report["captions"][1]
    # the file list says which view each image is scored as, before the analysis and after it
    assert report["scored_as_before"][0] == "frontal (set by you)"
    assert report["scored_as_before"][1].startswith("unknown: a JPEG or PNG has no view in it")
    assert report["scored_as_after"] == ["frontal (set by you)", "unknown (not given)"]
    # nothing but this server, and no script errors
    assert report["external_requests"] == [] and report["console_errors"] == []
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
