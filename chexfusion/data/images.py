"""Radiographs (JPEG, PNG, DICOM) to grayscale float images and model tensors.

Every reader returns float32 ``[H, W]`` in ``[0, 1]`` at a square size, so the
rest of the project never sees file formats. The format is sniffed from the
first bytes, never trusted from the file name (a PNG saved as ``.jpg`` is
common in exported datasets).

Speed matters because stage 1 reads every image every epoch at up to 1024 px
from 2500-3000 px originals: JPEGs are decoded at a reduced size with the
decoder's DCT scaling (``Image.draft``), which skips most of the inverse DCT and
leaves a 4x smaller image to resize (``benchmarks/image_decode.py`` measures
it). Image sizes are checked from the header *before* decoding so a
decompression bomb is refused instead of filling memory.

DICOMs are turned into what a model trained on JPEGs expects: the JPEGs of
MIMIC-CXR-JPG (the images CXR-LT is built on) were made from the DICOMs by
bit-depth normalisation to 8 bits and histogram equalisation (see
:func:`dicom_as_jpeg_pixels`), so a DICOM is read through the same recipe.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from .intensity import DEFAULT_INTENSITY, check_intensity, map_intensity

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm", ".dicom")
MAX_IMAGE_PIXELS = 100_000_000  # decompression-bomb cap; real radiographs are below 10 megapixels
# PIL's own bomb check would print a DecompressionBombWarning (or refuse with its own figure) before the project's
# limit is consulted: it is off, and every PIL open in chexfusion checks the caller's limit from the header before
# anything is decoded (open_checked below; the web demo's serve.uploads.read_header with its own limit).
Image.MAX_IMAGE_PIXELS = None
RESAMPLE = Image.Resampling.BICUBIC  # final resize; PIL widens the kernel when shrinking, so it is antialiased
RESIZE_MODES = ("squash", "letterbox")  # squash: stretch to a square; letterbox: keep aspect, pad with black

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DICOM_MAGIC_OFFSET = 128
_PIL_FORMATS = ("JPEG", "PNG")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I": how older Pillow opens 16-bit PNGs
_SIXTEEN_BIT_MAX = 65535.0
_COLOUR_MODES = ("1", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


class ImageError(UserError):
    """An image that cannot be read: one line naming the file and the reason."""

    def __init__(self, source, reason: str | None = None):
        if reason is None:  # rebuilt from a message: unpickled, or re-raised by a DataLoader worker
            message = _worker_message(str(source), type(self).__name__)
        else:
            message = f"cannot read image {source}: {reason}"
        self.source, self.reason = str(source), reason
        super().__init__(message)


def _worker_message(text: str, name: str) -> str:
    """torch re-raises a worker's exception as ``cls("Caught ... Original Traceback ...")``: keep its last line."""
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split(f"{name}: ", 1)[-1]


# ---------------------------------------------------------------------------- resizing


def _content_size(width: int, height: int, image_size: int, resize: str) -> tuple[int, int]:
    """Size the picture itself ends up with (the letterbox pads the rest)."""
    if resize == "squash":
        return image_size, image_size
    scale = image_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(image: Image.Image, image_size: int, resize: str) -> Image.Image:
    target = _content_size(*image.size, image_size, resize)
    resized = image.resize(target, RESAMPLE)
    if target == (image_size, image_size):
        return resized
    canvas = Image.new(image.mode, (image_size, image_size), 0)
    canvas.paste(resized, ((image_size - target[0]) // 2, (image_size - target[1]) // 2))
    return canvas


def _as_float(image: Image.Image) -> np.ndarray:
    """L (0..255) or F (already 0..1) image to float32 [0, 1]."""
    if image.mode == "L":
        return np.asarray(image, dtype=np.float32) * np.float32(1.0 / 255.0)
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)  # bicubic overshoots a little at sharp edges


def _check_pixels(source: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(
            source, f"{width} x {height} = {width * height} pixels is above the limit of {max_pixels} "
            "(a decompression bomb or a wrong file; raise max_pixels if it is genuine)"
        )


# ---------------------------------------------------------------------------- JPEG / PNG


def _pil_to_gray(image: Image.Image, source: str, intensity: str = DEFAULT_INTENSITY) -> Image.Image:
    """Any JPEG/PNG mode to an ``L`` (8-bit) or ``F`` (16-bit, mapped to [0, 1]) image.

    16-bit data is mapped by ``intensity`` (:mod:`.intensity`; by default divided by 65535, the maximum of its
    type, so a dark image stays dark); alpha is dropped (radiographs carry no meaning in it).
    """
    mode = image.mode
    if mode == "L":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        return Image.fromarray(map_intensity(np.asarray(image), intensity, _SIXTEEN_BIT_MAX), mode="F")
    if mode in ("LA", "La"):
        return image.getchannel(0)
    if mode in _COLOUR_MODES:
        return image.convert("L")
    raise ImageError(source, f"unsupported image mode {mode}")


def gray_from_pil(image: Image.Image, image_size: int, resize: str = "squash", source: str = "image",
                  intensity: str = DEFAULT_INTENSITY) -> np.ndarray:
    """A loaded PIL image (any mode ``_pil_to_gray`` reads, or ``F`` already in [0, 1]) as the readers' float
    ``[image_size, image_size]`` in [0, 1]: the last step of every JPEG / PNG read and of the API's in-memory
    images."""
    _check_resize(image_size, resize)
    gray = image if image.mode == "F" else _pil_to_gray(image, source, intensity)
    return _as_float(_resize(gray, image_size, resize))


def open_checked(stream: BinaryIO | str | os.PathLike, source: str, max_pixels: int = MAX_IMAGE_PIXELS,
                 formats=_PIL_FORMATS) -> Image.Image:
    """A PIL image opened lazily (only its header read), refused when it has more than ``max_pixels``."""
    try:
        image = Image.open(stream, formats=formats)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(source, f"corrupt or unsupported file ({exc})") from None
    try:
        _check_pixels(source, *image.size, max_pixels)
    except ImageError:
        image.close()
        raise
    return image


def _decode_pil(stream: BinaryIO, source: str, image_size: int, max_pixels: int, resize: str,
                use_draft: bool, intensity: str = DEFAULT_INTENSITY) -> np.ndarray:
    with open_checked(stream, source, max_pixels) as image:
        try:
            if use_draft and image.format == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale, never below the size we resize to.
                image.draft("L", _content_size(*image.size, image_size, resize))
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(source, f"corrupt or truncated file ({exc})") from None
        return gray_from_pil(image, image_size, resize, source, intensity)


# ---------------------------------------------------------------------------- DICOM


def _dicom_pixels(dataset, source: str, max_pixels: int) -> np.ndarray:
    """The first frame's stored values; refuses bombs and explains missing decoders."""
    from pydicom.pixels import get_decoder, pixel_array

    if "PixelData" not in dataset:
        raise ImageError(source, "DICOM file has no pixel data")
    rows, columns = dataset.get("Rows"), dataset.get("Columns")
    if not rows or not columns:
        raise ImageError(source, "DICOM file has no Rows/Columns")
    _check_pixels(source, int(columns), int(rows), max_pixels)
    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    if syntax is None:
        raise ImageError(source, "DICOM file has no TransferSyntaxUID in its file meta information")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageError(source, f"unsupported DICOM transfer syntax {syntax}") from None
    if not decoder.is_available:
        needs = " or ".join(decoder.missing_dependencies) or "a pydicom pixel data plugin"
        raise ImageError(source, f"DICOM compressed as '{syntax.name}' needs an extra package: install {needs}")
    try:
        return pixel_array(dataset, index=0 if int(dataset.get("NumberOfFrames", 1) or 1) > 1 else None)
    except Exception as exc:  # pydicom raises many types for damaged pixel data
        raise ImageError(source, f"DICOM pixel data cannot be decoded ({type(exc).__name__}: {exc})") from None


def _dicom_values(dataset, pixels: np.ndarray, source: str) -> tuple[np.ndarray, bool]:
    """(the stored values through the modality LUT, whether they are MONOCHROME1: low values white)."""
    from pydicom.pixels import apply_modality_lut

    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        try:
            values = apply_modality_lut(pixels, dataset)
        except Exception as exc:  # malformed rescale or LUT attributes
            raise ImageError(source, f"invalid DICOM modality LUT ({type(exc).__name__}: {exc})") from None
    elif pixels.ndim == 3 and pixels.shape[-1] == 3:  # RGB (pydicom converts YBR to RGB)
        values = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    else:
        raise ImageError(source, f"unsupported DICOM PhotometricInterpretation '{photometric}'")
    return np.asarray(values, dtype=np.float64), photometric == "MONOCHROME1"


def dicom_as_jpeg_pixels(values: np.ndarray, monochrome1: bool) -> np.ndarray:
    """DICOM values as the 8-bit pixels of MIMIC-CXR-JPG's JPEGs, before their (quality 95) compression.

    MIMIC-CXR-JPG (Johnson et al., arXiv 1901.07042) made its JPEGs from the DICOMs by normalising the
    bit depth to 8 bits and then equalising the histogram; CXR-LT's images are those JPEGs, so a model
    trained on them has only ever seen equalised 8-bit images, and a DICOM read any other way (a min/max
    stretch, as before) is a shifted input: up to 0.18 apart from the same picture as a PNG. The steps, as
    the conversion code that circulated with the dataset's authors (CheXpert's) does them: values scaled
    by their min and max to [0, 255] and truncated to 8 bits; MONOCHROME1 inverted (255 - v); then
    OpenCV's ``equalizeHist``: with ``h`` the histogram, ``i0`` its first non-empty level and ``N`` the
    pixel count, level ``v > i0`` becomes ``round(255 * (cdf(v) - h[i0]) / (N - h[i0]))`` and ``i0``
    becomes 0 (a one-level image stays as it is). Window / VOI LUT attributes are not applied: the
    recipe does not use them. Written out here because OpenCV is not a dependency.
    """
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    pixels = scaled.astype(np.uint8)
    if monochrome1:  # low values are white: flip so that bone is bright as in MONOCHROME2
        pixels = 255 - pixels
    hist = np.bincount(pixels.ravel(), minlength=256)
    first = int(np.flatnonzero(hist)[0])
    if hist[first] == pixels.size:
        return pixels
    cdf = np.cumsum(hist) - hist[first]
    lut = np.rint(cdf * (255.0 / (pixels.size - hist[first]))).clip(0, 255).astype(np.uint8)
    lut[: first + 1] = 0
    return lut[pixels]


def _decode_dicom(stream: BinaryIO, source: str, image_size: int, max_pixels: int, resize: str) -> np.ndarray:
    import pydicom

    try:
        dataset = pydicom.dcmread(stream)
    except Exception as exc:  # InvalidDicomError, EOFError, struct/value errors on damaged headers
        raise ImageError(source, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    values, monochrome1 = _dicom_values(dataset, _dicom_pixels(dataset, source, max_pixels), source)
    # from here on exactly the path of an 8-bit JPEG / PNG
    return _as_float(_resize(Image.fromarray(dicom_as_jpeg_pixels(values, monochrome1), mode="L"), image_size, resize))


# ---------------------------------------------------------------------------- public readers


def _check_resize(image_size: int, resize: str) -> None:
    if int(image_size) < 1:
        raise UserError(f"image_size must be a positive number of pixels, got {image_size}")
    if resize not in RESIZE_MODES:
        raise UserError(f"resize must be one of {', '.join(RESIZE_MODES)}, got '{resize}'")


def _decode(stream: BinaryIO, source: str, image_size: int, max_pixels: int, resize: str,
            use_draft: bool, intensity: str = DEFAULT_INTENSITY) -> np.ndarray:
    _check_resize(image_size, resize)
    check_intensity(intensity)
    head = stream.read(_DICOM_MAGIC_OFFSET + 4)
    stream.seek(0)
    if not head:
        raise ImageError(source, "empty file")
    if head[_DICOM_MAGIC_OFFSET:] == b"DICM":
        return _decode_dicom(stream, source, image_size, max_pixels, resize)
    if head.startswith(_JPEG_MAGIC) or head.startswith(_PNG_MAGIC):
        return _decode_pil(stream, source, image_size, max_pixels, resize, use_draft, intensity)
    raise ImageError(source, "not a JPEG, PNG or DICOM file")


def read_image(path: str | os.PathLike, image_size: int, max_pixels: int = MAX_IMAGE_PIXELS,
               resize: str = "squash", use_draft: bool = True, intensity: str = DEFAULT_INTENSITY) -> np.ndarray:
    """A radiograph file as float32 ``[image_size, image_size]`` in [0, 1].

    ``use_draft=False`` decodes JPEGs at full size first (only the benchmark wants that); ``intensity`` maps
    16-bit files (:mod:`.intensity`).
    """
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory") from None
    except OSError as exc:
        raise ImageError(path, exc.strerror or str(exc)) from None
    with handle:
        return _decode(handle, str(path), image_size, max_pixels, resize, use_draft, intensity)


def read_image_bytes(data: bytes, image_size: int, max_pixels: int = MAX_IMAGE_PIXELS,
                     resize: str = "squash", source: str = "uploaded image",
                     intensity: str = DEFAULT_INTENSITY) -> np.ndarray:
    """Same as :func:`read_image` from the bytes of a file (the web demo's uploads)."""
    return _decode(io.BytesIO(data), source, image_size, max_pixels, resize, use_draft=True, intensity=intensity)


# ---------------------------------------------------------------------------- model input


@dataclass(frozen=True)
class Preprocess:
    """Everything that turns a file into a model input; stored with features and checkpoints.

    Two feature stores or checkpoints are compatible only if these are equal,
    so nothing that changes the tensor may live outside this class.
    """

    image_size: int = 128
    channels: int = 3  # grayscale replicated for ImageNet-style backbones
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    resize: str = "squash"  # as CheXFusion and most CXR-LT entries: aspect not kept
    intensity: str = DEFAULT_INTENSITY  # 16-bit files to [0, 1]: full_range | minmax | percentile (.intensity)

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        _check_resize(self.image_size, self.resize)
        check_intensity(self.intensity)
        if int(self.channels) < 1:
            raise UserError(f"preprocess channels must be at least 1, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise UserError(
                f"preprocess mean and std need one value per channel ({self.channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise UserError(f"preprocess std values must be positive, got {self.std}")

    def to_dict(self) -> dict:
        """A JSON-ready dict; the default ``intensity`` is left out, so runs and stores made before the key
        existed (all full_range) stay equal to new ones and are not taken for stale."""
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        if self.intensity == DEFAULT_INTENSITY:
            del out["intensity"]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"preprocess: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})")
        return cls(**data)

    def read(self, path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
        """A file as a normalized ``[channels, H, W]`` tensor."""
        return to_tensor(read_image(path, self.image_size, max_pixels, self.resize, intensity=self.intensity), self)

    def from_pil(self, image: Image.Image, source: str = "image") -> torch.Tensor:
        """An image already in memory as a normalized ``[channels, H, W]`` tensor (16-bit mapped by ``intensity``)."""
        return to_tensor(gray_from_pil(image, self.image_size, self.resize, source, self.intensity), self)

    def read_bytes(self, data: bytes, max_pixels: int = MAX_IMAGE_PIXELS,
                   source: str = "uploaded image") -> torch.Tensor:
        """File bytes as a normalized ``[channels, H, W]`` tensor."""
        return to_tensor(read_image_bytes(data, self.image_size, max_pixels, self.resize, source, self.intensity), self)


def to_tensor(gray: np.ndarray, pre: Preprocess) -> torch.Tensor:
    """float [H, W] in [0, 1] -> normalized float32 ``[channels, H, W]``."""
    gray = np.ascontiguousarray(gray, dtype=np.float32)
    if gray.shape != (pre.image_size, pre.image_size):
        raise ValueError(f"expected a {pre.image_size} x {pre.image_size} image, got {gray.shape}")
    image = torch.from_numpy(gray).unsqueeze(0).expand(pre.channels, -1, -1)
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(-1, 1, 1)
    return (image - mean) / std


def is_image_path(path: str | os.PathLike) -> bool:
    """Whether a file name has one of the image suffixes (for listing folders; reading sniffs content)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES
