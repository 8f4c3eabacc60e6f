"""What one request may send, and the 4xx errors the demo answers with when it sends more or worse.

A public demo must not fall over on a large or hostile upload, so every limit is
checked as early as possible: the request size from ``Content-Length`` before a
byte of the body is read, then every file while it streams in, then each image's
pixel count from its header before it is decoded (a 20000 x 20000 PNG of one
colour is a few hundred kilobytes and 400 megapixels).
"""

from __future__ import annotations

from dataclasses import dataclass

MB = 1024 * 1024


@dataclass(frozen=True)
class ServeLimits:
    """Caps per upload file, per request and per image; ``chexfusion serve`` options set them."""

    max_file_bytes: int = 20 * MB
    max_request_bytes: int = 60 * MB
    max_images: int = 16  # files per request (one study); CXR-LT studies have 1 to 11 images
    max_pixels: int = 36_000_000  # per image, read from its header; radiographs are below 10 megapixels
    max_field_bytes: int = 1024  # a non-file form field (a view name)
    max_fields: int = 64  # non-file form fields per request
    decode_slots: int = 2  # images decoded at the same time, whatever the number of requests (bounds memory)
    preview_size: int = 512  # largest side of the preview image sent back for display

    def __post_init__(self):
        for name in ("max_file_bytes", "max_request_bytes", "max_images", "max_pixels", "max_field_bytes",
                     "max_fields", "decode_slots", "preview_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"serve limit {name} must be at least 1, got {getattr(self, name)}")

    def describe(self) -> dict:
        return {"max_file_bytes": self.max_file_bytes, "max_request_bytes": self.max_request_bytes,
                "max_images": self.max_images, "max_pixels": self.max_pixels}


class Rejected(Exception):
    """A request the demo refuses: HTTP ``status`` and a one-line ``detail`` naming the file or field."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, " ".join(str(detail).split())


PAYLOAD_TOO_LARGE = 413
UNSUPPORTED_MEDIA = 415
UNPROCESSABLE = 422
