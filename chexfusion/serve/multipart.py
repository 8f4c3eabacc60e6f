"""Read a ``multipart/form-data`` request body as it streams in, with every cap enforced on the way.

Starlette's own form parser caps the number of parts but not the size of a file
part, and spools large files to disk. This reader is fed the body chunk by chunk
(python-multipart's push parser) and stops the moment the request or one file
goes over its cap, so a 50 MB upload costs at most one cap's worth of memory and
never touches the disk: uploads stay in memory, bounded by ``max_request_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from .limits import PAYLOAD_TOO_LARGE, UNPROCESSABLE, UNSUPPORTED_MEDIA, Rejected, ServeLimits


@dataclass
class UploadedFile:
    filename: str
    data: bytes


@dataclass
class UploadForm:
    files: list[UploadedFile] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)


def _base_name(filename: str) -> str:
    """A client-side path reduced to its last component (some clients send ``C:\\x\\a.png``)."""
    return PureWindowsPath(PurePosixPath(filename).name).name


def _field_name(raw: str) -> str:
    """``files[]`` and ``files`` are the same field (PHP-style brackets are common in clients)."""
    return raw[:-2] if raw.endswith("[]") else raw


class _FormCollector:
    """python-multipart callbacks that collect parts and raise :class:`Rejected` past a cap."""

    def __init__(self, limits: ServeLimits, file_fields: set[str], text_fields: set[str]):
        self.limits, self.file_fields, self.text_fields = limits, file_fields, text_fields
        self.form = UploadForm()
        self.finished = False
        self._header_name, self._header_value, self._headers = b"", b"", {}
        self._name, self._filename, self._data = "", None, bytearray()
        self._text_count = 0

    def callbacks(self) -> dict:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end, "on_end": self.on_end}

    def on_part_begin(self) -> None:
        self._headers, self._data = {}, bytearray()
        self._header_name, self._header_value = b"", b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise Rejected(UNPROCESSABLE, "a form part has no Content-Disposition: form-data; name=...")
        self._name = _field_name(params[b"name"].decode("utf-8", "replace"))
        raw_filename = params.get(b"filename")
        self._filename = None if raw_filename is None else _base_name(raw_filename.decode("utf-8", "replace"))
        if self._filename is not None:
            if self._name not in self.file_fields:
                raise Rejected(UNPROCESSABLE, f"unexpected file field '{self._name}' "
                                              f"(send images as {' or '.join(sorted(self.file_fields))})")
            if len(self.form.files) >= self.limits.max_images:
                raise Rejected(UNPROCESSABLE, f"more than {self.limits.max_images} images in one request "
                                              "(the limit of one study)")
        else:
            if self._name not in self.text_fields:
                known = ", ".join(sorted(self.file_fields | self.text_fields))
                raise Rejected(UNPROCESSABLE, f"unknown form field '{self._name}' (known: {known})")
            self._text_count += 1
            if self._text_count > self.limits.max_fields:
                raise Rejected(UNPROCESSABLE, f"more than {self.limits.max_fields} form fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]
        if self._filename is not None and len(self._data) > self.limits.max_file_bytes:
            raise Rejected(PAYLOAD_TOO_LARGE, f"file '{self._filename}' is larger than the limit of "
                                              f"{self.limits.max_file_bytes} bytes")
        if self._filename is None and len(self._data) > self.limits.max_field_bytes:
            raise Rejected(UNPROCESSABLE, f"form field '{self._name}' is longer than "
                                          f"{self.limits.max_field_bytes} bytes")

    def on_part_end(self) -> None:
        if self._filename is not None:
            self.form.files.append(UploadedFile(self._filename or f"image {len(self.form.files) + 1}",
                                                bytes(self._data)))
        else:
            value = bytes(self._data).decode("utf-8", "replace")
            self.form.fields.setdefault(self._name, []).append(value)
        self._data = bytearray()

    def on_end(self) -> None:
        self.finished = True


def _boundary(content_type: str | None) -> bytes:
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise Rejected(UNSUPPORTED_MEDIA, "send the images as multipart/form-data "
                                          f"(got Content-Type '{content_type or 'none'}')")
    if not params.get(b"boundary"):
        raise Rejected(UNPROCESSABLE, "multipart/form-data without a boundary")
    return params[b"boundary"]


def check_content_length(value: str | None, limits: ServeLimits) -> None:
    """Refuse a request whose declared size is over the cap before reading any of it."""
    if value is None:
        return  # chunked: counted while streaming
    try:
        declared = int(value)
    except ValueError:
        raise Rejected(UNPROCESSABLE, f"invalid Content-Length '{value}'") from None
    if declared > limits.max_request_bytes:
        raise Rejected(PAYLOAD_TOO_LARGE, f"request of {declared} bytes is larger than the limit of "
                                          f"{limits.max_request_bytes} bytes")


async def read_form(headers, stream, limits: ServeLimits, file_fields: set[str],
                    text_fields: set[str]) -> UploadForm:
    """Parse a multipart body from an async byte ``stream`` (``request.stream()``) under ``limits``."""
    check_content_length(headers.get("content-length"), limits)
    kind, _ = parse_options_header(headers.get("content-type") or "")
    if kind in (b"", b"application/x-www-form-urlencoded"):
        return UploadForm()  # a plain form or no body carries no file: the caller answers "no images" (422)
    collector = _FormCollector(limits, file_fields, text_fields)
    parser = MultipartParser(_boundary(headers.get("content-type")), collector.callbacks())
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > limits.max_request_bytes:
                raise Rejected(PAYLOAD_TOO_LARGE, f"request is larger than the limit of "
                                                  f"{limits.max_request_bytes} bytes")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise Rejected(UNPROCESSABLE, f"malformed multipart body ({exc})") from None
    if not collector.finished:
        raise Rejected(UNPROCESSABLE, "incomplete multipart body (no closing boundary)")
    return collector.form
