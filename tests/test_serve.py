"""The web demo's API: same numbers as ``chexfusion predict``, heat maps, views, limits, concurrency.

Runs on the session's tiny trained runs (conftest ``tiny_stage2`` / ``tiny_stage1``).
"""

from __future__ import annotations

import io
import json
import resource
import socket
import struct
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from chexfusion.data.classes import prevalence_group
from chexfusion.data.cxr_lt import read_cxr_lt
from chexfusion.inference import load_predictor
from chexfusion.predictions import read_predictions
from chexfusion.serve import ServeLimits, create_app
from chexfusion.serve.background import serve_in_background

# ---------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def stage2_predictor(tiny_stage2):
    return load_predictor(tiny_stage2, "cpu")


@pytest.fixture(scope="module")
def client(stage2_predictor):
    with TestClient(create_app(stage2_predictor)) as c:
        yield c


def small_client(predictor, **limits) -> TestClient:
    return TestClient(create_app(predictor, ServeLimits(**limits)))


@pytest.fixture(scope="module")
def study(tiny_data):
    """The test-split study with the most images (ties: the first), as CXR-LT rows with their views."""
    table = read_cxr_lt(tiny_data / "test.csv", classes=[])
    frame = table.frame
    sizes = frame["study_id"].value_counts(sort=False)
    chosen = sizes.index[int(np.argmax(sizes.to_numpy()))]
    rows = frame[frame["study_id"] == chosen]
    assert len(rows) >= 2, "the tiny test split needs a study with several images"
    return rows


def upload(rows, root: Path, views=True):
    """(files, data) for TestClient.post: the rows' image files and, optionally, their CSV views."""
    files = [("files", (Path(p).name, (root / p).read_bytes(), "application/octet-stream")) for p in rows["fpath"]]
    return files, ({"views": list(rows["view"])} if views else {})


def predict_cli(run_cli, rows, data_root: Path, model: Path, out_dir: Path, *extra) -> dict[str, np.ndarray]:
    """``chexfusion predict`` on exactly these rows: {dicom_id: probabilities}."""
    raw = pd.read_csv(data_root / "test.csv", dtype=str, keep_default_na=False)
    csv = out_dir / "study.csv"
    raw[raw["dicom_id"].isin(set(rows["dicom_id"]))].to_csv(csv, index=False)
    code, _, err = run_cli("predict", "--model", model, "--csv", csv, "--image-root", data_root,
                           "--out", out_dir / "pred.csv", *extra)
    assert code == 0, err
    ids, _, probs = read_predictions(out_dir / "pred.csv")
    return dict(zip(ids["dicom_id"], probs))


def finding_probs(body, classes) -> np.ndarray:
    by_class = {f["class"]: f["probability"] for f in body["study"]["findings"]}
    return np.array([by_class[c] for c in classes])


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit ``side`` x ``side`` black PNG: ~100 kB on disk, 400 megapixels decoded."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


def dicom_bytes(view_position: str | None, size=(40, 30), declared=None) -> bytes:
    """A small 12-bit DICOM; ``declared`` (rows, columns) overrides the header's size, as a bomb would."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    rows, columns = size
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(rows * columns, dtype=np.uint16).reshape(rows, columns) % 4096).tobytes()
    if view_position is not None:
        ds.ViewPosition = view_position
    if declared is not None:
        ds.Rows, ds.Columns = declared
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def png_bytes(size=(48, 32), value=128) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_one_line_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    for word in words:
        assert word in detail, detail


# ---------------------------------------------------------------------------- the page, health, schema


def test_health_names_the_run_its_classes_and_limits(client, tiny_stage2):
    body = client.get("/health").json()
    info = json.loads((tiny_stage2 / "run.json").read_text())
    assert body["status"] == "ok" and body["kind"] == "stage2"
    assert body["run"] == tiny_stage2.name
    assert body["classes"] == info["classes"]
    assert body["max_images_scored"] == info["max_images"]
    assert body["limits"]["max_images"] == ServeLimits().max_images


def test_page_and_its_assets_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="/static/app.js"' in page.text and 'href="/static/style.css"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    for asset in ("/static/app.js", "/static/style.css"):
        response = client.get(asset)
        assert response.status_code == 200 and response.text
        assert "http://" not in response.text and "https://" not in response.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/docs").status_code == 404  # FastAPI's docs page would load scripts from a CDN


def test_openapi_documents_predict_and_health(client):
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/api/predict"]["post"]
    body = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["files"] and set(body["properties"]) == {"files", "views", "classes", "maps"}
    ok = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/PredictResponse")
    assert {"413", "415", "422"} <= set(post["responses"])
    response_props = schema["components"]["schemas"]["PredictResponse"]["properties"]
    assert {"study", "images", "heatmaps"} <= set(response_props)
    finding = schema["components"]["schemas"]["Finding"]["properties"]
    assert {"class", "probability", "group"} <= set(finding)
    assert "/health" in schema["paths"]


# ---------------------------------------------------------------------------- predictions


def test_several_images_score_as_chexfusion_predict(client, study, tiny_data, tiny_stage2, run_cli, tmp_path):
    files, data = upload(study, tiny_data)
    response = client.post("/api/predict", files=files, data=data)
    assert response.status_code == 200, response.text
    body = response.json()
    classes = client.get("/health").json()["classes"]
    expected = predict_cli(run_cli, study, tiny_data, tiny_stage2, tmp_path)
    reference = expected[study["dicom_id"].iloc[0]]  # every image of the study carries the study's value
    np.testing.assert_allclose(finding_probs(body, classes), reference, atol=1e-5)

    probabilities = [f["probability"] for f in body["study"]["findings"]]
    assert probabilities == sorted(probabilities, reverse=True)
    prevalence = json.loads((tiny_stage2 / "run.json").read_text())["train_prevalence"]
    groups = {f["class"]: f["group"] for f in body["study"]["findings"]}
    assert groups == {c: prevalence_group(p) for c, p in zip(classes, prevalence)}
    assert body["study"]["aggregation"] == "fusion"
    assert [im["name"] for im in body["images"]] == [Path(p).name for p in study["fpath"]]
    assert [im["view"] for im in body["images"]] == list(study["view"])
    assert all(im["view_source"] == "user" and im["used"] for im in body["images"])


def test_one_image_scores_as_chexfusion_predict(client, study, tiny_data, tiny_stage2, run_cli, tmp_path):
    one = study.iloc[[1]]
    files, data = upload(one, tiny_data)
    body = client.post("/api/predict", files=files, data=data).json()
    expected = predict_cli(run_cli, one, tiny_data, tiny_stage2, tmp_path)
    np.testing.assert_allclose(finding_probs(body, client.get("/health").json()["classes"]),
                               expected[one["dicom_id"].iloc[0]], atol=1e-5)
    image = body["images"][0]
    with Image.open(tiny_data / one["fpath"].iloc[0]) as original:
        assert (image["width"], image["height"]) == original.size
    assert image["format"] == "JPEG" and image["preview"].startswith("data:image/jpeg;base64,")


def test_heat_maps_one_per_image_and_class_on_the_feature_grid(client, study, tiny_data, stage2_predictor):
    files, data = upload(study, tiny_data)
    body = client.post("/api/predict", files=files, data=data).json()
    heat = body["heatmaps"]
    h, w = stage2_predictor.model.feature_hw  # the tokens put where they looked, so the page's upsampling is in place
    classes = stage2_predictor.classes
    assert (heat["height"], heat["width"]) == (h, w)
    assert len(heat["images"]) == len(study)
    grids = np.array([[heat["images"][i][c] for c in classes] for i in range(len(study))])
    assert grids.shape == (len(study), len(classes), h, w)
    assert grids.min() >= 0.0
    np.testing.assert_allclose(grids.max(axis=(0, 2, 3)), 1.0, atol=1e-4)  # per class, study max is 1
    decoder = stage2_predictor.model.decoder
    assert heat["query_of_class"][classes[-1]] == (len(classes) - 1) // decoder.classes_per_group


def test_the_map_type_switches_to_grad_cam_hires_cam_and_group_cam(client, study, tiny_data, stage2_predictor):
    from chexfusion.explain.serve_maps import GRID, GROUPCAM_TOP

    files, data = upload(study, tiny_data)
    attention = client.post("/api/predict", files=files, data=data).json()
    assert attention["heatmaps"]["method"] == "attention" and attention["heatmaps"]["mapped"] is None
    classes = stage2_predictor.classes
    for method in ("gradcam", "hirescam", "groupcam"):
        body = client.post("/api/predict", files=files, data={**data, "maps": method}).json()
        heat = body["heatmaps"]
        assert heat["method"] == method and (heat["height"], heat["width"]) == (GRID, GRID)
        assert body["study"] == attention["study"]  # the maps change, the prediction does not
        top = {f["class"] for f in attention["study"]["findings"][:GROUPCAM_TOP]}
        assert set(heat["mapped"]) == (top if method == "groupcam" else set(classes))
        grids = np.array([[heat["images"][i][c] for c in classes] for i in range(len(study))])
        assert grids.shape == (len(study), len(classes), GRID, GRID) and grids.min() >= 0.0
        peaks = grids.max(axis=(0, 2, 3))
        assert np.all(np.isclose(peaks, 1.0, atol=1e-4) | (peaks == 0.0))  # per class, study max 1 (or no map)
        unmapped = [k for k, c in enumerate(classes) if c not in heat["mapped"]]
        assert (peaks[unmapped] == 0.0).all()
    response = client.post("/api/predict", files=files, data={**data, "maps": "saliency"})
    assert response.status_code == 422 and "'saliency' is not one of" in response.json()["detail"]


def test_images_past_max_images_are_listed_but_not_scored(tiny_stage2, study, tiny_data):
    predictor = load_predictor(tiny_stage2, "cpu")
    predictor.max_images = 1
    with TestClient(create_app(predictor)) as capped:
        # a lateral first and a frontal second: the frontal one is scored (frontal first), whatever the order
        files, _ = upload(study.iloc[:2], tiny_data)
        body = capped.post("/api/predict", files=files, data={"views": ["lateral", "frontal"]}).json()
        alone = capped.post("/api/predict", files=files[1:], data={"views": ["frontal"]}).json()
    assert [im["used"] for im in body["images"]] == [False, True]
    assert body["heatmaps"]["images"][0] is None and body["heatmaps"]["images"][1] is not None
    assert body["study"]["findings"] == alone["study"]["findings"]


def test_views_come_from_the_dicom_header_unless_the_user_sets_them(client):
    files = [("files", ("lat.dcm", dicom_bytes("LL"), "application/dicom")),
             ("files", ("nameless.png", dicom_bytes(None), "image/png")),  # a DICOM under a PNG name
             ("files", ("front.dcm", dicom_bytes("LL"), "application/dicom")),
             ("files", ("plain.png", png_bytes(), "image/png"))]
    body = client.post("/api/predict", files=files, data={"views": ["auto", "auto", "frontal", "auto"]}).json()
    got = [(im["format"], im["view"], im["view_source"], im["width"], im["height"]) for im in body["images"]]
    assert got == [("DICOM", "lateral", "dicom", 30, 40), ("DICOM", "unknown", "default", 30, 40),
                   ("DICOM", "frontal", "user", 30, 40), ("PNG", "unknown", "default", 48, 32)]
    assert body["images"][3]["display_aspect"] == pytest.approx(48 / 32)


def test_stage1_run_scores_the_study_as_the_max_over_its_images(tiny_stage1, study, tiny_data, run_cli, tmp_path):
    predictor = load_predictor(tiny_stage1, "cpu")
    with TestClient(create_app(predictor)) as c:
        assert c.get("/health").json()["kind"] == "stage1"
        files, data = upload(study, tiny_data)
        body = c.post("/api/predict", files=files, data=data).json()
    assert body["kind"] == "stage1" and body["study"]["aggregation"] == "max"
    expected = predict_cli(run_cli, study, tiny_data, tiny_stage1, tmp_path, "--aggregate", "max")
    np.testing.assert_allclose(finding_probs(body, predictor.classes), expected[study["dicom_id"].iloc[0]],
                               atol=1e-5)
    _, h, w = predictor.run.info["feature_shape"]
    first = body["heatmaps"]["images"][0]
    assert set(first) == set(predictor.classes)
    assert np.array(first[predictor.classes[0]]).shape == (h, w)


def test_uploads_never_touch_the_disk(client, study, tiny_data, tmp_path, monkeypatch):
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    files, data = upload(study, tiny_data)
    assert client.post("/api/predict", files=files, data=data).status_code == 200
    assert list(spool.iterdir()) == []


# ---------------------------------------------------------------------------- refusals


def test_no_file_is_422(client):
    assert_one_line_error(client.post("/api/predict", data={"views": ["auto"]}), 422, "no images")
    assert_one_line_error(client.post("/api/predict", files={"other": ("a.png", png_bytes())}), 422, "'other'")


def test_text_file_named_png_is_415(client):
    response = client.post("/api/predict", files=[("files", ("x.png", b"just some text\n" * 20, "image/png"))])
    assert_one_line_error(response, 415, "x.png", "not a JPEG, PNG or DICOM")


def test_not_multipart_is_415(client):
    assert_one_line_error(client.post("/api/predict", json={"files": []}), 415, "multipart/form-data")


def test_50_mb_upload_is_413_before_it_is_read(client):
    big = png_bytes() + b"\0" * (50 * 1024 * 1024)
    response = client.post("/api/predict", files=[("files", ("big.png", big, "image/png"))])
    assert_one_line_error(response, 413, "larger than the limit")


def test_request_cap_holds_without_content_length(stage2_predictor):
    def chunks():  # a generator body: sent chunked, so only counting while streaming can stop it
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(64):
            yield b"\0" * 4096

    with small_client(stage2_predictor, max_request_bytes=100_000) as c:
        response = c.post("/api/predict", content=chunks(),
                          headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert_one_line_error(response, 413, "request is larger")


def test_file_cap_is_413_naming_the_file(stage2_predictor):
    with small_client(stage2_predictor, max_file_bytes=1000) as c:
        response = c.post("/api/predict", files=[("files", ("ok.png", png_bytes())),
                                                 ("files", ("huge.png", png_bytes() + b"\0" * 2000))])
    assert_one_line_error(response, 413, "huge.png")


def test_too_many_images_is_422(stage2_predictor):
    with small_client(stage2_predictor, max_images=2) as c:
        response = c.post("/api/predict", files=[("files", (f"{i}.png", png_bytes())) for i in range(3)])
    assert_one_line_error(response, 422, "more than 2 images")


def test_views_must_match_files_and_be_known(client):
    files = [("files", ("a.png", png_bytes())), ("files", ("b.png", png_bytes()))]
    assert_one_line_error(client.post("/api/predict", files=files, data={"views": ["auto"]}), 422, "1 views for 2")
    assert_one_line_error(client.post("/api/predict", files=files, data={"views": ["auto", "oblique"]}), 422,
                          "views[1]", "oblique")


def test_truncated_image_is_422_naming_it(client, study, tiny_data):
    data = (tiny_data / study["fpath"].iloc[0]).read_bytes()
    response = client.post("/api/predict", files=[("files", ("cut.jpg", data[: len(data) // 3]))])
    assert_one_line_error(response, 422, "cut.jpg")


def test_decompression_bomb_is_413_without_decoding(client):
    bomb = bomb_png()
    assert len(bomb) < 1024 * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    response = client.post("/api/predict", files=[("files", ("bomb.png", bomb, "image/png"))])
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert_one_line_error(response, 413, "bomb.png")
    assert grown_mb < 200  # decoding it would take 400 MB at least
    # the server goes on serving
    assert client.get("/health").status_code == 200


def test_dicom_declaring_too_many_pixels_is_413(client):
    response = client.post("/api/predict", files=[("files", ("huge.dcm", dicom_bytes("PA", declared=(30000, 30000))))])
    assert_one_line_error(response, 413, "huge.dcm", "30000 x 30000")


def test_pixel_cap_is_configurable(stage2_predictor):
    with small_client(stage2_predictor, max_pixels=1000) as c:
        response = c.post("/api/predict", files=[("files", ("small.png", png_bytes((48, 32))))])
    assert_one_line_error(response, 413, "small.png", "48 x 32")


# ---------------------------------------------------------------------------- a real server


def test_50_concurrent_requests_on_loopback_all_succeed(stage2_predictor, study, tiny_data):
    import httpx

    files, data = upload(study, tiny_data)
    with serve_in_background(create_app(stage2_predictor)) as url:
        with httpx.Client(base_url=url, timeout=60.0) as http:
            def one(_):
                response = http.post("/api/predict", files=files, data=data)
                return response.status_code, response.json()["study"] if response.status_code == 200 else None

            with ThreadPoolExecutor(max_workers=50) as pool:
                results = list(pool.map(one, range(50), timeout=120))
    assert [code for code, _ in results] == [200] * 50
    assert all(body == results[0][1] for _, body in results)


def test_serve_command_reports_a_busy_port_and_a_missing_run(run_cli, tiny_stage2, tmp_path):
    code, _, err = run_cli("serve", "--model", tmp_path, "--port", "0")
    assert code == 2 and "no run.json" in err and len(err.strip().splitlines()) == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = run_cli("serve", "--model", tiny_stage2, "--port", busy.getsockname()[1])
    assert code == 2 and "cannot listen" in err


def test_a_learned_query_run_refuses_other_class_names(client, study, tiny_data):
    assert client.get("/health").json()["scores_other_names"] is False
    files, data = upload(study, tiny_data)
    response = client.post("/api/predict", files=files, data={**data, "classes": "Bulla"})
    assert response.status_code == 422
    assert "learned class queries" in response.json()["detail"]
    response = client.post("/api/predict", files=files, data={**data, "classes": "Bulla,,Hilum"})
    assert response.status_code == 422 and "empty name" in response.json()["detail"]
