"""data.intensity: how 16-bit radiographs (PadChest: 12 or 10 stored bits) map to [0, 1], recorded and re-applied."""

import io

import numpy as np
import pytest
from PIL import Image

from chexfusion.data.images import Preprocess, read_image, read_image_bytes
from chexfusion.data.intensity import map_intensity
from chexfusion.errors import UserError

TWELVE_BIT = np.array([[0, 1024], [2048, 4095]], dtype=np.uint16)


def test_full_range_divides_by_the_type_maximum():
    assert map_intensity(TWELVE_BIT, "full_range", 65535.0) == pytest.approx(TWELVE_BIT / 65535.0)


def test_minmax_stretches_each_image_to_its_own_range():
    values = np.array([[100, 600], [1100, 2100]], dtype=np.uint16)
    assert map_intensity(values, "minmax", 65535.0) == pytest.approx(np.array([[0.0, 0.25], [0.5, 1.0]]))
    assert map_intensity(np.full((3, 3), 7, np.uint16), "minmax", 65535.0).tolist() == [[0.0] * 3] * 3


def test_percentile_clips_to_the_half_percent_tails_then_stretches():
    values = np.arange(1000, dtype=np.uint16).reshape(20, 50)  # 0..999
    low, high = 0.005 * 999, 0.995 * 999  # numpy's linear percentiles of 0..999: 4.995 and 994.005
    mapped = map_intensity(values, "percentile", 65535.0)
    expected = (np.clip(values.astype(np.float64), low, high) - low) / (high - low)
    assert mapped == pytest.approx(expected, abs=1e-6)
    assert mapped.min() == 0.0 and mapped.max() == 1.0


def png16(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_readers_apply_the_mode_to_16_bit_files_only(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 32), (32, 1)).astype(np.uint16)
    (tmp_path / "a.png").write_bytes(png16(ramp))
    dark = read_image(tmp_path / "a.png", 32)
    stretched = read_image(tmp_path / "a.png", 32, intensity="minmax")
    assert dark.max() == pytest.approx(4095 / 65535, abs=2e-3) and stretched.max() == pytest.approx(1.0, abs=2e-3)
    assert read_image_bytes(png16(ramp), 32, intensity="percentile").max() == pytest.approx(1.0, abs=2e-3)
    eight = np.tile(np.linspace(0, 100, 32), (32, 1)).astype(np.uint8)
    Image.fromarray(eight).save(tmp_path / "b.png")
    assert read_image(tmp_path / "b.png", 32, intensity="minmax") == pytest.approx(read_image(tmp_path / "b.png", 32))


def test_the_choice_is_recorded_in_preprocess_and_old_records_still_match():
    pre = Preprocess(image_size=32, intensity="percentile")
    assert pre.to_dict()["intensity"] == "percentile"
    assert Preprocess.from_dict(pre.to_dict()) == pre
    assert "intensity" not in Preprocess(image_size=32).to_dict()  # runs and stores from before the key
    assert Preprocess.from_dict({"image_size": 32}).intensity == "full_range"
    with pytest.raises(UserError, match="intensity must be one of full_range, minmax, percentile"):
        Preprocess(image_size=32, intensity="window")


def test_a_run_reads_images_with_its_own_mode(tmp_path):
    ramp = np.tile(np.linspace(0, 1023, 32), (32, 1)).astype(np.uint16)  # 10 stored bits
    (tmp_path / "a.png").write_bytes(png16(ramp))
    as_trained = Preprocess(image_size=32, intensity="minmax").read(tmp_path / "a.png")
    default = Preprocess(image_size=32).read(tmp_path / "a.png")
    assert float(as_trained.max()) > float(default.max()) + 3.0  # normalized: [0, 1] vs [0, 1/64] before mean/std


@pytest.mark.parametrize("mode", ["full_range", "minmax", "percentile"])
def test_a_16_bit_image_in_memory_maps_as_the_same_file_does(tmp_path, mode):
    """The Python API's in-memory images (PIL, uint16 arrays) go through the run's mapping, as files do."""
    from chexfusion.inference.inputs import model_input

    pixels = (np.random.default_rng(0).uniform(size=(40, 30)) * 4095).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    pre = Preprocess(image_size=16, intensity=mode)
    from_file = pre.read(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as image:
        np.testing.assert_allclose(pre.from_pil(image).numpy(), from_file.numpy(), atol=1e-6)
    np.testing.assert_allclose(model_input(pixels, pre).numpy(), from_file.numpy(), atol=1e-6)
