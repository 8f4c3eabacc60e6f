"""Uploaded files to model inputs: content sniffing, header checks, view detection, decoding, a preview.

The header is read first, without decoding pixels: it gives the original size
(the page draws the squashed model input back at the image's own aspect ratio),
the pixel count that is refused past the cap (a decompression bomb costs a 413,
not the server's memory), and for DICOM the ``ViewPosition``. Decoding then
goes through :func:`chexfusion.data.images.read_image_bytes`, the same reader
``chexfusion predict`` uses, so a study scores the same in the demo and in batch.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..data.images import Preprocess, read_image_bytes, to_tensor
from ..data.views import UNKNOWN, VIEWS, dicom_view
from ..errors import UserError
from .limits import PAYLOAD_TOO_LARGE, UNPROCESSABLE, UNSUPPORTED_MEDIA, Rejected, ServeLimits
from .multipart import UploadedFile

AUTO = "auto"  # the view choice meaning: from the DICOM header, else unknown
VIEW_CHOICES = (AUTO, *VIEWS)
_JPEG_MAGIC, _PNG_MAGIC, _DICOM_MAGIC, _DICOM_OFFSET = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"DICM", 128


@dataclass
class ImageHeader:
    format: str  # JPEG, PNG or DICOM (from the content, not the name)
    width: int
    height: int
    dicom_view: str | None  # from ViewPosition / ViewCodeSequence; None when the file has no such header


@dataclass
class PreparedImage:
    name: str
    header: ImageHeader
    view: str
    view_source: str  # user, dicom or default
    tensor: torch.Tensor  # normalized [C, H, W], exactly as predict builds it
    preview: str  # JPEG data URL of the model input (what the model saw), for display under the heat map


def sniff_format(upload: UploadedFile) -> str:
    data = upload.data
    if data[_DICOM_OFFSET:_DICOM_OFFSET + 4] == _DICOM_MAGIC:
        return "DICOM"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    raise Rejected(UNSUPPORTED_MEDIA, f"'{upload.filename}' is not a JPEG, PNG or DICOM file "
                                      "(its content was checked, not its name)")


def _dicom_header(upload: UploadedFile) -> ImageHeader:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(upload.data), stop_before_pixels=True)
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        view = dicom_view(ds)
    except Exception as exc:  # pydicom raises many types on damaged headers
        raise Rejected(UNPROCESSABLE, f"'{upload.filename}' is not a readable DICOM file "
                                      f"({type(exc).__name__}: {exc})") from None
    if not rows or not columns:
        raise Rejected(UNPROCESSABLE, f"'{upload.filename}': DICOM file has no Rows/Columns")
    return ImageHeader("DICOM", columns, rows, view)


def _pil_header(upload: UploadedFile, fmt: str) -> ImageHeader:
    try:
        with Image.open(io.BytesIO(upload.data), formats=(fmt,)) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise Rejected(UNPROCESSABLE, f"'{upload.filename}' is a corrupt {fmt} file ({exc})") from None
    return ImageHeader(fmt, width, height, None)


def read_header(upload: UploadedFile, limits: ServeLimits) -> ImageHeader:
    """Format, size and DICOM view from the header only; refuses unknown content and too many pixels."""
    if not upload.data:
        raise Rejected(UNPROCESSABLE, f"'{upload.filename}' is empty")
    fmt = sniff_format(upload)
    header = _dicom_header(upload) if fmt == "DICOM" else _pil_header(upload, fmt)
    pixels = header.width * header.height
    if pixels > limits.max_pixels:
        raise Rejected(PAYLOAD_TOO_LARGE, f"'{upload.filename}' is {header.width} x {header.height} = {pixels} "
                                          f"pixels, above the limit of {limits.max_pixels}")
    return header


def choose_view(requested: str, header: ImageHeader) -> tuple[str, str]:
    """(view, source): the user's choice wins; ``auto`` takes the DICOM header, else ``unknown``."""
    if requested != AUTO:
        return requested, "user"
    if header.dicom_view is not None:
        return header.dicom_view, "dicom"
    return UNKNOWN, "default"


def preview_data_url(gray: np.ndarray, max_side: int) -> str:
    """The model input (float [H, W] in [0, 1]) as a JPEG data URL, shrunk to ``max_side`` if larger.

    JPEG because it is for display only: a 512 px radiograph is ~30 kB instead of ~200 kB as PNG.
    """
    image = Image.fromarray(np.round(np.clip(gray, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")
    if max(image.size) > max_side:
        image = image.resize((max_side, max_side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def prepare_image(upload: UploadedFile, requested_view: str, preprocess: Preprocess,
                  limits: ServeLimits) -> PreparedImage:
    """Check, decode and normalize one upload; every problem is a :class:`Rejected` naming the file."""
    header = read_header(upload, limits)
    view, source = choose_view(requested_view, header)
    try:
        gray = read_image_bytes(upload.data, preprocess.image_size, max_pixels=limits.max_pixels,
                                resize=preprocess.resize, source=f"'{upload.filename}'",
                                intensity=preprocess.intensity)
    except UserError as exc:  # ImageError: corrupt, truncated, unsupported DICOM encoding
        raise Rejected(UNPROCESSABLE, str(exc)) from None
    return PreparedImage(upload.filename, header, view, source, to_tensor(gray, preprocess),
                         preview_data_url(gray, limits.preview_size))


def requested_views(values: list[str] | None, count: int) -> list[str]:
    """One view choice per file (``auto`` when none are sent); a wrong count or name is a 422."""
    if not values:
        return [AUTO] * count
    if len(values) != count:
        raise Rejected(UNPROCESSABLE, f"got {len(values)} views for {count} files: send one view per file, "
                                      "in the same order, or none")
    out = []
    for i, value in enumerate(values):
        view = value.strip().lower() or AUTO
        if view not in VIEW_CHOICES:
            raise Rejected(UNPROCESSABLE, f"views[{i}] is '{value}': must be one of {', '.join(VIEW_CHOICES)}")
        out.append(view)
    return out
