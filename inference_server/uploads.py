"""multipart/form-data request bodies -> files and fields, with every limit enforced while the
body streams in.

The parser is python-multipart's (Starlette's), fed from aiohttp's body stream. aiohttp's own
BodyPartReader re-parses each part's Content-Disposition (escaping a 128-character class on
every call) and searches each 64 KiB chunk for the boundary in Python: 0.8 ms for a 10 s WAV
upload, against 0.1 ms here, which on a small model was a tenth of the whole request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from inference_server.errors import APIError, bad_request, too_large

FIELD_LIMIT = 64 * 1024   # bytes per non-file form field
MAX_FIELDS = 32           # non-file form fields per request


@dataclass
class Upload:
    files: list[tuple[str, bytearray]] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)   # the last value of each field
    # Every value, in order: array parameters repeat a field (`timestamp_granularities[]`).
    values: dict[str, list[str]] = field(default_factory=dict)


def body_limit(max_bytes: int, max_files: int) -> int:
    """The most bytes a request body may hold: its files plus room for the form fields."""
    return max_bytes * max_files + FIELD_LIMIT


def require_form_boundary(content_type_header: str) -> bytes:
    """The boundary of a multipart/form-data Content-Type; 415 or 400 for anything else."""
    content_type, params = parse_options_header(content_type_header)
    if content_type != b"multipart/form-data":
        shown = content_type.decode("latin-1") or "(none)"
        raise APIError(415, f"content type {shown} is not supported; send multipart/form-data with the "
                       "audio in the 'file' field", code="unsupported_content_type")
    boundary = params.get(b"boundary")
    if not boundary:
        raise bad_request("the multipart/form-data content type names no boundary; let the HTTP client "
                          "build the form (e.g. curl -F file=@clip.wav)")
    return boundary


class FormCollector:
    """python-multipart callbacks that gather parts into an Upload, raising as soon as a limit
    is crossed (the exception leaves MultipartParser.write and stops the read)."""

    def __init__(self, max_bytes: int, max_files: int) -> None:
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.upload = Upload()
        self.finished = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}
        self._name = ""
        self._filename: str | None = None
        self._data = bytearray()
        self._size = 0

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value_data, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers, self._data, self._size = {}, bytearray(), 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.decode("latin-1").strip().lower()] = self._header_value.decode("latin-1")
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        if self._headers.get("content-type", "").lower().startswith("multipart/"):
            raise bad_request("nested multipart bodies are not supported")
        _, params = parse_options_header(self._headers.get("content-disposition", ""))
        self._name = params.get(b"name", b"").decode("utf-8", errors="replace")
        filename = params.get(b"filename")
        self._filename = filename.decode("utf-8", errors="replace") if filename is not None else None
        if self._is_file():
            if len(self.upload.files) >= self.max_files:
                raise bad_request(f"at most {self.max_files} file(s) per request", "file")
        elif sum(map(len, self.upload.values.values())) >= MAX_FIELDS:
            raise bad_request(f"at most {MAX_FIELDS} form fields besides the files per request", self._name)

    def _is_file(self) -> bool:
        return self._name == "file"

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._is_file():
            if self._size > self.max_bytes:
                raise too_large(f"the uploaded file is over the limit of {self.max_bytes} bytes")
        elif self._size > FIELD_LIMIT:
            raise bad_request(f"form field {self._name!r} is longer than {FIELD_LIMIT} bytes", self._name)
        # One copy, chunk to buffer (a bytes slice and a join at the end would be two).
        self._data += memoryview(data)[start:end]

    def _part_end(self) -> None:
        value, self._data = self._data, bytearray()
        if self._is_file():
            self.upload.files.append((self._filename or f"file{len(self.upload.files)}", value))
        else:
            text = value.decode("utf-8", errors="replace")
            self.upload.fields[self._name] = text
            self.upload.values.setdefault(self._name, []).append(text)

    def _end(self) -> None:
        self.finished = True


async def read_multipart(request: web.Request, max_bytes: int, max_files: int = 1) -> Upload:
    """Read a multipart/form-data body: at most `max_files` files of `max_bytes` each."""
    boundary = require_form_boundary(request.headers.get("Content-Type", ""))
    limit = body_limit(max_bytes, max_files)
    if request.content_length is not None and request.content_length > limit:
        raise too_large(f"the request body is {request.content_length} bytes; the limit is {max_bytes} per file")
    collector = FormCollector(max_bytes, max_files)
    received = 0
    try:
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
        async for chunk in request.content.iter_any():
            received += len(chunk)
            if received > limit:  # a chunked body has no Content-Length to check up front
                raise too_large(f"the request body is over {limit} bytes; the limit is {max_bytes} per file")
            parser.write(chunk)
    except APIError:
        raise
    except FormParserError as exc:
        raise bad_request(f"the multipart body could not be parsed ({exc}); check the boundary and "
                          "let the HTTP client build the form") from None
    except Exception as exc:  # the connection broke mid-body
        raise bad_request(f"the request body could not be read ({type(exc).__name__}: {exc})") from None
    if not collector.finished:
        raise bad_request("the multipart body ended before its closing boundary (truncated upload, or a "
                          "boundary that does not match the Content-Type)")
    return collector.upload
