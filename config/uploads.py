"""The upload size limit (``GOLDSET_UPLOAD_MAX_BYTES``), enforced while the bytes arrive, before they are
written to disk: a multipart upload over it stops being read into a temporary file at the limit, and the
view says why (``refused``); the import service counts a streamed body the same way."""

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload


def max_bytes() -> int:
    return settings.GOLDSET_UPLOAD_MAX_BYTES


def too_big_message(limit: int | None = None) -> str:
    limit = max_bytes() if limit is None else limit
    return (
        f"The file is larger than the upload limit of {limit / (1024 * 1024):,.1f} MB: split it into smaller "
        "files, or raise GOLDSET_UPLOAD_MAX_BYTES."
    )


class SizeLimitUploadHandler(FileUploadHandler):
    """First of the upload handlers: stops the upload (nothing more is stored) once it passes the limit."""

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.seen = 0
        # A declared length already over the limit (plus room for the form's other fields) stops at once.
        self.refuse_now = content_length is not None and content_length > max_bytes() + 64 * 1024
        return None

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        if self.refuse_now:
            self._refuse()

    def receive_data_chunk(self, raw_data, start):
        self.seen += len(raw_data)
        if self.seen > max_bytes():
            self._refuse()
        return raw_data

    def file_complete(self, file_size):
        return None

    def _refuse(self):
        self.request.upload_refused = too_big_message()
        # connection_reset: do not read (and discard) the rest of a body that may be huge.
        raise StopUpload(connection_reset=True)


def refused(request) -> str:
    """Why the request's upload was refused, or ""."""
    return getattr(request, "upload_refused", "")
