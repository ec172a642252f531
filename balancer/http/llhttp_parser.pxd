# Types for llhttp_parser.pyx, the compiled build's llhttp driver (see that file), and the
# part of llhttp's C API it and its two directions (llhttp_request, llhttp_response) use
# (vendor/llhttp/include/llhttp.h).

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint64_t


cdef extern from "llhttp.h":
    ctypedef struct llhttp_t:
        int32_t error
        void *data
        uint64_t content_length
        uint8_t method
        uint8_t http_major
        uint8_t http_minor
        uint8_t upgrade
        uint16_t status_code

    ctypedef int (*llhttp_data_cb)(llhttp_t*, const char *at, size_t length) noexcept
    ctypedef int (*llhttp_cb)(llhttp_t*) noexcept

    ctypedef struct llhttp_settings_t:
        llhttp_cb on_message_begin
        llhttp_data_cb on_protocol
        llhttp_data_cb on_url
        llhttp_data_cb on_status
        llhttp_data_cb on_header_field
        llhttp_data_cb on_header_value
        llhttp_cb on_headers_complete
        llhttp_data_cb on_body
        llhttp_cb on_message_complete
        llhttp_cb on_header_field_complete
        llhttp_cb on_header_value_complete
        llhttp_cb on_chunk_header
        llhttp_cb on_chunk_complete

    ctypedef enum llhttp_type_t:
        HTTP_REQUEST
        HTTP_RESPONSE

    ctypedef enum llhttp_errno_t:
        HPE_OK
        HPE_INVALID_METHOD
        HPE_INVALID_STATUS
        HPE_INVALID_URL
        HPE_PAUSED_UPGRADE

    void llhttp_init(llhttp_t* parser, llhttp_type_t type, const llhttp_settings_t* settings)
    void llhttp_settings_init(llhttp_settings_t* settings)
    llhttp_errno_t llhttp_execute(llhttp_t* parser, const char* data, size_t len)
    int llhttp_should_keep_alive(const llhttp_t* parser)
    void llhttp_resume_after_upgrade(llhttp_t* parser)
    const char* llhttp_get_error_reason(const llhttp_t* parser)
    const char* llhttp_get_error_pos(const llhttp_t* parser)


cdef class LlhttpParser:
    cdef llhttp_t _ll
    # A header's name and value so far: llhttp hands them over in pieces when a read cuts them.
    cdef bytes _field, _value
    cdef bint _pending  # a whole header waits to be handed over (_deliver_pending)
    cdef object _error  # what a callback raised, for the HttpParserCallbackError

    cdef void _start(self, llhttp_type_t kind)
    cpdef feed_data(self, bytes data)
    cpdef bint should_keep_alive(self)
    cpdef bint should_upgrade(self)
    cpdef str get_http_version(self)
    cdef object _failure(self, llhttp_errno_t err)
    cdef int _deliver_pending(self) except -1
    cdef int _message_begin(self) except -1
    cdef int _text(self, bytes text) except -1
    cdef int _protocol(self, const char* at, size_t length) except -1
    cdef int _header(self, bytes name, bytes value) except -1
    cdef int _headers_complete(self) except -1
    cdef int _chunk_header(self) except -1
    cdef int _body(self, bytes data) except -1
    cdef int _message_complete(self) except -1
