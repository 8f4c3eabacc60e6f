import io
import json
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from chexfusion.data import images
from chexfusion.data.images import ImageError, Preprocess, read_image, read_image_bytes, to_tensor
from chexfusion.errors import UserError


def save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def gradient(height=60, width=40):
    """Rows brighten from 0 to 255 top to bottom (smooth: survives JPEG and resizing)."""
    return np.repeat(np.linspace(0, 255, height)[:, None], width, axis=1).astype(np.uint8)


def dicom(pixels, photometric="MONOCHROME2", bits_stored=12, **attributes) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = attributes.pop("transfer_syntax", ExplicitVRLittleEndian)
    ds = FileDataset("test.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    pixel_data = attributes.pop("pixel_data", None)
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = pixel_data if pixel_data is not None else pixels.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def centres(n):
    """The gradient's value at the centres of n resized rows."""
    return (np.arange(n) + 0.5) / n


RAMP = np.tile(np.linspace(0, 4000, 16), (16, 1))  # columns brighten left to right


# ------------------------------------------------------------------ JPEG and PNG


def test_jpeg_grayscale_to_float_square(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(save(Image.fromarray(gradient()), "JPEG", quality=95))
    gray = read_image(path, 32)
    assert gray.shape == (32, 32) and gray.dtype == np.float32
    assert 0.0 <= gray.min() and gray.max() <= 1.0
    np.testing.assert_allclose(gray[:, 16], centres(32), atol=0.02)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "I;16"])
def test_png_modes_become_the_same_grayscale(mode):
    base = Image.fromarray(gradient())
    if mode == "I;16":
        image = Image.fromarray(gradient().astype(np.uint16) * 257)  # 8-bit values spread over 16 bits
    elif mode == "P":
        image = base.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    else:
        image = base.convert(mode)
    if mode in ("LA", "RGBA"):  # a fully transparent alpha channel must not matter
        image.putalpha(0)
    gray = read_image_bytes(save(image, "PNG"), 30)
    expected = read_image_bytes(save(base, "PNG"), 30)
    np.testing.assert_allclose(gray, expected, atol=2 / 255)


def test_rgb_jpeg_and_binary_png():
    rgb = Image.fromarray(gradient()).convert("RGB")
    np.testing.assert_allclose(read_image_bytes(save(rgb, "JPEG", quality=95), 20)[:, 10],
                               centres(20), atol=0.03)
    white = read_image_bytes(save(Image.new("1", (10, 10), 1), "PNG"), 4)
    assert white.min() == 1.0


def test_sixteen_bit_png_is_scaled_by_its_type_not_clipped():
    dark = np.full((20, 20), 4096, dtype=np.uint16)  # 1/16 of the 16-bit range
    gray = read_image_bytes(save(Image.fromarray(dark), "PNG"), 8)
    np.testing.assert_allclose(gray, 4096 / 65535, atol=1e-5)
    half = read_image_bytes(save(Image.fromarray(np.full((20, 20), 32768, np.uint16)), "PNG"), 8)
    np.testing.assert_allclose(half, 32768 / 65535, atol=1e-5)


def test_mode_i_is_treated_as_sixteen_bit():
    image = Image.fromarray(np.full((4, 4), 65535, dtype=np.int32))
    assert image.mode == "I"
    gray = images._pil_to_gray(image, "x")
    assert gray.mode == "F" and np.asarray(gray).max() == pytest.approx(1.0)


def test_format_is_sniffed_not_taken_from_the_name(tmp_path):
    png_named_jpg = tmp_path / "really_a_png.jpg"
    png_named_jpg.write_bytes(save(Image.fromarray(gradient()), "PNG"))
    np.testing.assert_allclose(read_image(png_named_jpg, 16)[:, 8], centres(16), atol=0.02)
    text_named_png = tmp_path / "notes.png"
    text_named_png.write_text("hello")
    with pytest.raises(ImageError, match=r"notes.png: not a JPEG, PNG or DICOM file"):
        read_image(text_named_png, 16)


def test_bytes_and_file_give_the_same_result(tmp_path):
    data = save(Image.fromarray(gradient()), "JPEG")
    (tmp_path / "a.jpg").write_bytes(data)
    np.testing.assert_array_equal(read_image(tmp_path / "a.jpg", 24), read_image_bytes(data, 24))


def radiograph_like(height, width, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    body = np.exp(-(((yy - 0.55) / 0.6) ** 2 + ((xx - 0.5) / 0.42) ** 2) ** 3)
    lungs = np.exp(-(((yy - 0.45) / 0.28) ** 2 + ((np.abs(xx - 0.5) - 0.18) / 0.14) ** 2) ** 2)
    image = 0.1 + 0.6 * body - 0.3 * lungs * body
    return np.clip(image * 255 + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)


def test_draft_decodes_at_reduced_size_never_below_target_and_matches_full(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    path.write_bytes(save(Image.fromarray(radiograph_like(1200, 1100)), "JPEG", quality=90))
    decoded_sizes = []
    original_load = JpegImageFile.load

    def recording_load(self):
        decoded_sizes.append(self.size)
        return original_load(self)

    monkeypatch.setattr(JpegImageFile, "load", recording_load)
    draft = read_image(path, 256)
    assert set(decoded_sizes) == {(275, 300)}  # 1/4 scale; 1/8 would fall below 256 px
    decoded_sizes.clear()
    full = read_image(path, 256, use_draft=False)
    assert set(decoded_sizes) == {(1100, 1200)}
    psnr = 10 * np.log10(1.0 / np.mean((draft.astype(np.float64) - full) ** 2))
    assert psnr > 35


def test_draft_for_letterbox_asks_for_the_content_size(tmp_path, monkeypatch):
    path = tmp_path / "wide.jpg"
    path.write_bytes(save(Image.fromarray(radiograph_like(600, 1200)), "JPEG"))
    requests = []
    original_draft = JpegImageFile.draft
    monkeypatch.setattr(JpegImageFile, "draft", lambda self, mode, size: requests.append(size) or
                        original_draft(self, mode, size))
    read_image(path, 128, resize="letterbox")
    assert requests == [(128, 64)]


def test_letterbox_keeps_aspect_and_pads_with_black():
    wide = Image.new("L", (200, 100), 255)
    gray = read_image_bytes(save(wide, "PNG"), 40, resize="letterbox")
    assert gray.shape == (40, 40)
    assert gray[:10].max() == 0 and gray[30:].max() == 0  # bars above and below
    assert gray[12:28].min() == 1.0
    squashed = read_image_bytes(save(wide, "PNG"), 40)
    assert squashed.min() == 1.0


# ------------------------------------------------------------------ errors


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageError) as err:
        read_image(tmp_path / "nope.jpg", 16)
    assert str(err.value) == f"cannot read image {tmp_path / 'nope.jpg'}: file not found"
    assert isinstance(err.value, UserError)


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0garbage" * 4, b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_corrupt_files_name_the_path(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=r"cannot read image .*bad.jpg: "):
        read_image(path, 16)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_errors_not_half_images(tmp_path, fmt):
    data = save(Image.fromarray(radiograph_like(300, 200)), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.\w+: corrupt or truncated"):
        read_image(path, 16)


def test_error_message_is_one_line():
    with pytest.raises(ImageError) as err:
        read_image_bytes(b"\xff\xd8\xff\xe0" + b"x\ny" * 10, 8, source="upload.jpg")
    assert "\n" not in str(err.value) and str(err.value).startswith("cannot read image upload.jpg: ")


def png_header_only(width, height):
    """A PNG whose header claims a size (the pixel data is absent)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_images_above_max_pixels_are_refused_before_decoding():
    with pytest.raises(ImageError, match="100 x 100 = 10000 pixels is above the limit of 9999"):
        read_image_bytes(png_header_only(100, 100), 16, max_pixels=9999)
    with pytest.raises(ImageError, match="pixels is above the limit"):
        read_image_bytes(png_header_only(60000, 60000), 16)


@pytest.mark.parametrize("side", [12000, 16000])  # above PIL's own warning level, and above its error level
def test_the_projects_pixel_limit_speaks_before_pil_warns(side):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        with pytest.raises(ImageError, match=f"{side} x {side} = {side * side} pixels is above the limit of "
                                             f"{images.MAX_IMAGE_PIXELS}"):
            read_image_bytes(png_header_only(side, side), 16)


def test_a_real_image_under_the_limit_reads():
    gray = read_image_bytes(save(Image.fromarray(gradient(100, 100)), "PNG"), 16, max_pixels=10000)
    assert gray.shape == (16, 16)


# ------------------------------------------------------------------ DICOM


def mimic_cxr_jpg_reference(values, monochrome1=False):
    """The recipe of MIMIC-CXR-JPG's JPEGs (arXiv 1901.07042), step by step: bit depth normalised to 8 bits
    (min/max to [0, 255], truncated), MONOCHROME1 inverted, then histogram equalisation as OpenCV's
    equalizeHist computes it (the first occupied level goes to 0, each later level to its share of the rest
    of the pixels, rounded)."""
    values = values.astype(np.float64)
    eight_bit = np.floor((values - values.min()) / (values.max() - values.min()) * 255).astype(np.uint8)
    if monochrome1:
        eight_bit = 255 - eight_bit
    counts = [int((eight_bit == level).sum()) for level in range(256)]
    first = next(level for level in range(256) if counts[level])
    rest = eight_bit.size - counts[first]
    table, below = [0] * 256, 0
    for level in range(first + 1, 256):
        below += counts[level]
        table[level] = int(np.rint(below * 255.0 / rest))
    return np.array(table, dtype=np.uint8)[eight_bit]


def radiograph_12bit(seed=0, shape=(48, 40)):
    """A smooth 12-bit picture with noise and a bright band (more levels than 8 bits hold, unevenly used)."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, shape[0])[:, None] ** 2 * np.ones(shape)
    picture = 600 + 2500 * rows + rng.normal(0, 60, shape)
    picture[:, 10:14] = 3900
    return np.clip(picture, 0, 4095).round()


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_is_read_as_mimic_cxr_jpg_made_its_jpegs(photometric):
    """The DICOM and the (losslessly saved) JPEG-to-be that the recipe makes of it give the model the same input."""
    stored = radiograph_12bit()
    reference = mimic_cxr_jpg_reference(stored, photometric == "MONOCHROME1")
    np.testing.assert_array_equal(images.dicom_as_jpeg_pixels(stored, photometric == "MONOCHROME1"), reference)
    from_dicom = read_image_bytes(dicom(stored, photometric=photometric), 32)
    from_png = read_image_bytes(save(Image.fromarray(reference), "PNG"), 32)
    np.testing.assert_array_equal(from_dicom, from_png)
    assert 0.4 < (reference < 128).mean() < 0.6  # equalised: half the pixels on each side of mid-grey


def test_dicom_rescale_is_applied_and_window_attributes_are_not():
    """A negative rescale slope inverts the values; a window is a display setting the recipe does not use."""
    stored = radiograph_12bit(1)
    plain = read_image_bytes(dicom(stored), 16)
    windowed = read_image_bytes(dicom(stored, WindowCenter=2000, WindowWidth=500), 16)
    np.testing.assert_array_equal(plain, windowed)
    inverted = read_image_bytes(dicom(stored, RescaleSlope=-1, RescaleIntercept=4095), 16)
    expected = read_image_bytes(save(Image.fromarray(mimic_cxr_jpg_reference(4095 - stored)), "PNG"), 16)
    np.testing.assert_array_equal(inverted, expected)


def test_a_flat_dicom_stays_black_not_an_error():
    assert not read_image_bytes(dicom(np.full((8, 8), 1000)), 8).any()


def test_dicom_too_many_pixels_is_refused_before_decoding():
    # The header claims 40000 x 30000 pixels; the data holds one. Decoding would fail differently.
    data = dicom(np.zeros((1, 1)), Rows=40000, Columns=30000, pixel_data=b"\0\0")
    with pytest.raises(ImageError, match="30000 x 40000 = 1200000000 pixels is above the limit"):
        read_image_bytes(data, 8)


def test_dicom_compressed_without_decoder_says_what_to_install():
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    data = dicom(np.zeros((8, 8)), transfer_syntax=JPEGLosslessSV1, pixel_data=encapsulate([b"\xff\xd8junk"]))
    with pytest.raises(ImageError, match=r"needs an extra package: install .*pylibjpeg"):
        read_image_bytes(data, 8)


def test_dicom_without_pixels_or_broken_is_an_error():
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientID = "1"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(ImageError, match="no pixel data"):
        read_image_bytes(buffer.getvalue(), 8)
    with pytest.raises(ImageError, match="cannot read image"):
        read_image_bytes(dicom(RAMP)[:200], 8)


# ------------------------------------------------------------------ Preprocess and tensors


def test_preprocess_round_trips_through_json():
    pre = Preprocess(image_size=64, resize="letterbox")
    data = json.loads(json.dumps(pre.to_dict()))
    assert Preprocess.from_dict(data) == pre
    assert data == {"image_size": 64, "channels": 3, "mean": [0.485, 0.456, 0.406],
                    "std": [0.229, 0.224, 0.225], "resize": "letterbox"}


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": 1}, "one value per channel"),
    ({"std": (0.2, 0.0, 0.2)}, "positive"),
    ({"resize": "crop"}, "resize must be one of"),
    ({"image_size": 0}, "image_size"),
])
def test_bad_preprocess_is_a_user_error(kwargs, message):
    with pytest.raises(UserError, match=message):
        Preprocess(**kwargs)


def test_from_dict_refuses_unknown_keys():
    with pytest.raises(UserError, match="unknown key 'size'"):
        Preprocess.from_dict({"size": 3})


def test_to_tensor_replicates_and_normalizes():
    pre = Preprocess(image_size=4)
    tensor = to_tensor(np.full((4, 4), 0.5, np.float32), pre)
    assert tensor.shape == (3, 4, 4) and tensor.dtype == torch.float32
    for c in range(3):
        assert torch.allclose(tensor[c], torch.full((4, 4), (0.5 - pre.mean[c]) / pre.std[c]))
    single = to_tensor(np.zeros((4, 4), np.float32), Preprocess(image_size=4, channels=1, mean=(0.5,), std=(0.25,)))
    assert single.shape == (1, 4, 4) and torch.all(single == -2)
    with pytest.raises(ValueError):
        to_tensor(np.zeros((5, 4), np.float32), pre)


def test_preprocess_reads_a_file_to_a_tensor(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(save(Image.fromarray(gradient()), "PNG"))
    pre = Preprocess(image_size=16)
    assert torch.equal(pre.read(path), to_tensor(read_image(path, 16), pre))
    assert torch.equal(pre.read_bytes(path.read_bytes()), pre.read(path))
