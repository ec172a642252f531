# cython: language_level=3
"""llhttp driven from C, for the compiled build: the parser's events reach the request reader
and the backend connection as C calls, not as Python calls per header.

httptools (what the pure build uses) wraps the same llhttp and calls a Python method for every
callback: ~650 instructions a header with the bytes it makes, and two parsers per request
(docs/decisions.md, "Speed"). The parser here (LlhttpParser) and its two directions
(llhttp_request.pyx, llhttp_response.pyx: modules of their own, so that each imports only
the module it calls) keep httptools' interface where the balancer uses
it (`feed_data`, its exceptions, `get_method`, `should_keep_alive`...), so parser.py and
upstream.py read the same in both builds; only the delivery of the callbacks differs.

llhttp's sources are in vendor/llhttp (the version httptools bundles, MIT licence).
"""

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserInvalidMethodError,
    HttpParserInvalidStatusError,
    HttpParserInvalidURLError,
    HttpParserUpgrade,
)

cdef llhttp_settings_t _REQUEST_SETTINGS
cdef llhttp_settings_t _RESPONSE_SETTINGS


cdef class LlhttpParser:
    """What both directions share: the C state, headers put together from their pieces,
    errors turned into httptools' exceptions."""

    cpdef feed_data(self, bytes data):
        # A callback may drop the last reference to this parser (a connection that turns into
        # a tunnel forgets it) while llhttp still runs on the state inside it: hold one.
        cdef LlhttpParser running = self
        cdef const char* start = data
        cdef llhttp_errno_t err = llhttp_execute(&self._ll, start, len(data))
        if err == HPE_OK:
            return
        if err == HPE_PAUSED_UPGRADE and self._ll.upgrade:
            # As httptools: the offset where the tunnel's bytes start, and the parser free to
            # read again (nothing does: the connection is a tunnel from here on).
            offset = llhttp_get_error_pos(&self._ll) - start
            llhttp_resume_after_upgrade(&self._ll)
            raise HttpParserUpgrade(offset)
        raise self._failure(err)

    cdef object _failure(self, llhttp_errno_t err):
        cdef const char* reason = llhttp_get_error_reason(&self._ll)
        text = reason.decode("latin-1") if reason != NULL else ""
        if self._error is not None:
            # A callback raised: its exception is the cause, as httptools reports it.
            failure = HttpParserCallbackError(text)
            failure.__context__ = self._error
            self._error = None
            return failure
        if err == HPE_INVALID_METHOD:
            return HttpParserInvalidMethodError(text)
        if err == HPE_INVALID_STATUS:
            return HttpParserInvalidStatusError(text)
        if err == HPE_INVALID_URL:
            return HttpParserInvalidURLError(text)
        return HttpParserError(text)

    cdef void _start(self, llhttp_type_t kind):
        """Called once, by the subclass's constructor."""
        llhttp_init(&self._ll, kind, &_REQUEST_SETTINGS if kind == HTTP_REQUEST else &_RESPONSE_SETTINGS)
        self._ll.data = <void*>self

    cpdef bint should_keep_alive(self):
        return llhttp_should_keep_alive(&self._ll)

    cpdef bint should_upgrade(self):
        return self._ll.upgrade

    cpdef str get_http_version(self):
        return f"{self._ll.http_major}.{self._ll.http_minor}"

    cdef int _deliver_pending(self) except -1:
        """The header read last, handed over once the line after it is known to be well formed
        (the next name starts, or the head or a trailer section ends): where httptools hands
        it over, so that both builds answer a malformed line after a header alike."""
        name = self._field if self._field is not None else b""
        value = self._value if self._value is not None else b""
        self._field = self._value = None
        self._pending = False
        return self._header(name, value)

    # What each direction does with an event; the C callbacks below call these.
    cdef int _message_begin(self) except -1:
        return 0

    cdef int _text(self, bytes text) except -1:
        return 0

    cdef int _protocol(self, const char* at, size_t length) except -1:
        return 0

    cdef int _header(self, bytes name, bytes value) except -1:
        return 0

    cdef int _headers_complete(self) except -1:
        return 0

    cdef int _chunk_header(self) except -1:
        return 0

    cdef int _body(self, bytes data) except -1:
        return 0

    cdef int _message_complete(self) except -1:
        return 0


# -- llhttp's callbacks: a non-zero return stops the parser; the exception waits in _error ------
# Written out one per event: a shared dispatcher (one callback body, a switch on the event)
# measured 850 more instructions per request, ~25 an event, on the hottest path there is.

cdef int _on_message_begin(llhttp_t* ll) noexcept:
    cdef LlhttpParser parser = <LlhttpParser>ll.data
    try:
        parser._message_begin()
    except BaseException as exc:
        parser._error = exc
        return -1
    return 0


cdef int _on_text(llhttp_t* ll, const char* at, size_t length) noexcept:
    # The request target, or a response's reason phrase; in pieces when a read cuts it.
    cdef LlhttpParser parser = <LlhttpParser>ll.data
    try:
        parser._text(at[:length])
    except BaseException as exc:
        parser._error = exc
        return -1
    return 0


cdef int _on_protocol(llhttp_t* ll, const char* at, size_t length) noexcept:
    # A request line's protocol name (HTTP, RTSP or ICE), in pieces when a read cuts it.
    cdef LlhttpParser parser = <LlhttpParser>ll.data
    try:
        parser._protocol(at, length)
    except BaseException as exc:
        parser._error = exc
        return -1
    return 0


cdef int _on_header_field(llhttp_t* ll, const char* at, size_t length) noexcept:
    cdef LlhttpParser parser = <LlhttpParser>ll.data
    try:
        if parser._pending:
            parser._deliver_pending()
        piece = at[:length]
        parser._field = piece if parser._field is None else parser._field + piece
    except BaseException as exc:
        parser._error = exc
        return -1
    return 0


cdef int _on_header_value(llhttp_t* ll, const char* at, size_t length) noexcept:
    cdef LlhttpParser parser = <LlhttpParser>ll.data
    try:
        piece = at[:length]
        parser._value = piece if parser._value is None else parser._value + piece
    except BaseException as exc:
        parser._error = exc
        return -1
    return 0


cdef int _on_header_value_complete(llhttp_t* ll) noexcept:
    (<LlhttpParser>ll.data)._pending = True
    return 0


cdef int _on_headers_complete(llhttp_t* ll) noexcept:
    cdef LlhttpParser parser = <LlhttpParser>ll.data
    try:
        if parser._pending:
            parser._deliver_pending()
        parser._headers_complete()
    except BaseException as exc:
        parser._error = exc
        return -1
    # An upgrade has no body: llhttp stops after the head with HPE_PAUSED_UPGRADE (httptools'
    # answer too).
    return 1 if ll.upgrade else 0


cdef int _on_chunk_header(llhttp_t* ll) noexcept:
    cdef LlhttpParser parser = <LlhttpParser>ll.data
    try:
        parser._chunk_header()
    except BaseException as exc:
        parser._error = exc
        return -1
    return 0


cdef int _on_chunk_complete(llhttp_t* ll) noexcept:
    # After the last chunk: the end of its trailer section, whose last field waits.
    cdef LlhttpParser parser = <LlhttpParser>ll.data
    try:
        if parser._pending:
            parser._deliver_pending()
    except BaseException as exc:
        parser._error = exc
        return -1
    return 0


cdef int _on_body(llhttp_t* ll, const char* at, size_t length) noexcept:
    cdef LlhttpParser parser = <LlhttpParser>ll.data
    try:
        parser._body(at[:length])
    except BaseException as exc:
        parser._error = exc
        return -1
    return 0


cdef int _on_message_complete(llhttp_t* ll) noexcept:
    cdef LlhttpParser parser = <LlhttpParser>ll.data
    try:
        parser._message_complete()
    except BaseException as exc:
        parser._error = exc
        return -1
    return 0


cdef void _settings(llhttp_settings_t* settings) noexcept:
    # What both directions are told; each adds its own below.
    llhttp_settings_init(settings)
    settings.on_message_begin = _on_message_begin
    settings.on_header_field = _on_header_field
    settings.on_header_value = _on_header_value
    settings.on_header_value_complete = _on_header_value_complete
    settings.on_headers_complete = _on_headers_complete
    settings.on_chunk_complete = _on_chunk_complete
    settings.on_body = _on_body
    settings.on_message_complete = _on_message_complete


_settings(&_REQUEST_SETTINGS)
_REQUEST_SETTINGS.on_url = _on_text
_REQUEST_SETTINGS.on_protocol = _on_protocol
_REQUEST_SETTINGS.on_chunk_header = _on_chunk_header
_settings(&_RESPONSE_SETTINGS)
_RESPONSE_SETTINGS.on_status = _on_text
