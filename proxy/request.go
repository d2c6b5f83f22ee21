package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// The traffic port reads requests itself, strictly (RFC 9112): a request
// whose framing two parsers could read two ways is refused, never
// forwarded. What it refuses that net/http's server accepts:
//   - Content-Length and Transfer-Encoding together (net/http drops the
//     Content-Length and reads it chunked);
//   - a Content-Length given twice, even with the same value;
//   - a line that ends in a bare LF, or a CR not followed by LF;
//   - obs-fold, a field line that starts with SP or HTAB;
//   - Transfer-Encoding in an HTTP/1.0 request;
//   - a request target with a byte outside visible ASCII;
//   - a chunk size of more than 16 hex digits, a chunk or trailer line
//     with a control character.
// CONNECT is not served (501).

const (
	maxFields    = 256     // field lines in a request head; more: 431
	maxChunkLine = 4 << 10 // a chunk-size line with its extensions
	maxTrailer   = 16 << 10
	// maxEmptyLines is how many empty lines before a request line are
	// ignored (RFC 9112 section 2.2 allows some): none, as net/http.
	maxEmptyLines = 0
)

// reqError is a request the proxy refuses: the status it answers with,
// and what was wrong (for the debug log and the tests, never the client).
type reqError struct {
	code int
	why  string
}

func (e *reqError) Error() string { return e.why }

func badRequest(why string) error { return &reqError{http.StatusBadRequest, why} }

var (
	errHeadTooLarge = &reqError{http.StatusRequestHeaderFieldsTooLarge, "request head too large"}
	errBareLF       = badRequest("line ends in a bare LF")
	errBareCR       = badRequest("CR not followed by LF")
)

// request is one request head as the proxy forwards it. Its strings are
// substrings of head; the fields slice is reused from one request of a
// connection to the next.
type request struct {
	head   string
	method string
	target string // origin-form (or "*"); an absolute-form target is rewritten to it
	minor  int    // HTTP/1.minor: 0 or 1
	host   string
	fields []field // every field line in order, names as sent

	length  int64 // the body's Content-Length; -1: none given
	chunked bool
	close   bool   // the client wants the connection closed after this exchange
	expect  bool   // Expect: 100-continue
	upgrade string // the protocol asked for with Connection: upgrade, or ""
	conn    string // the Connection field's values, joined by commas
	cookie  bool   // a Cookie field is present
}

// hasBody reports whether a body follows the head.
func (rq *request) hasBody() bool { return rq.chunked || rq.length > 0 }

// readHead returns the next request head from br, up to and with its empty
// line, checking line ends as it goes so that a bare LF is refused at once
// rather than waited on. limit caps its size. Empty lines before the
// request line stay at the head's start.
func readHead(br *bufio.Reader, limit int) (string, error) {
	var (
		s   headScan
		acc []byte // a head larger than br's buffer, gathered here
		off int    // bytes of br's buffer scanned
	)
	for {
		if off == br.Buffered() {
			if off == br.Size() {
				b, _ := br.Peek(off)
				acc = append(acc, b...)
				br.Discard(off)
				off = 0
			}
			if _, err := br.Peek(off + 1); err != nil {
				if errors.Is(err, io.EOF) && (off > 0 || len(acc) > 0) {
					err = io.ErrUnexpectedEOF
				}
				return "", err
			}
		}
		b, _ := br.Peek(br.Buffered())
		end, err := s.feed(b[off:])
		if err != nil {
			return "", err
		}
		if end >= 0 {
			end += off
			if len(acc)+end > limit {
				return "", errHeadTooLarge
			}
			var h string
			if acc == nil {
				h = string(b[:end])
			} else {
				h = string(append(acc, b[:end]...))
			}
			br.Discard(end)
			return h, nil
		}
		off = len(b)
		if len(acc)+off > limit {
			return "", errHeadTooLarge
		}
	}
}

// headScan finds the end of a head, fed its bytes in pieces.
type headScan struct {
	cr      bool // the last byte was a CR
	lineLen int  // bytes of the current line so far
	lines   int  // lines with content so far
	empty   int  // empty lines before the request line
}

// feed scans b and returns the offset in b just past the head's empty
// line, or -1 when the head goes on.
func (s *headScan) feed(b []byte) (int, error) {
	for i, c := range b {
		if s.cr {
			if c != '\n' {
				return -1, errBareCR
			}
			s.cr = false
			switch {
			case s.lineLen > 0:
				s.lines++
			case s.lines > 0:
				return i + 1, nil
			default:
				if s.empty++; s.empty > maxEmptyLines {
					return -1, badRequest("empty lines before the request")
				}
			}
			s.lineLen = 0
			continue
		}
		switch c {
		case '\r':
			s.cr = true
		case '\n':
			return -1, errBareLF
		default:
			s.lineLen++
		}
	}
	return -1, nil
}

// parseRequest parses head (as readHead returned it) into rq.
func parseRequest(head string, rq *request) error {
	*rq = request{head: head, fields: rq.fields[:0], length: -1}
	rest := head
	for strings.HasPrefix(rest, "\r\n") {
		rest = rest[2:]
	}
	if strings.Contains(rest, "\r\n ") || strings.Contains(rest, "\r\n\t") {
		return badRequest("obs-fold")
	}
	line, rest, _ := strings.Cut(rest, "\r\n")
	if err := rq.parseLine(line); err != nil {
		return err
	}
	hosts, lengths, tes := 0, 0, 0
	var te string
	absHost := rq.host // from an absolute-form target: it wins over Host
	for {
		line, rest, _ = strings.Cut(rest, "\r\n")
		if line == "" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return badRequest("obs-fold")
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 || !validFieldName(line[:colon]) {
			return badRequest("bad field name")
		}
		k, v := line[:colon], strings.Trim(line[colon+1:], " \t")
		if !validFieldValue(v) {
			return badRequest("control character in a field value")
		}
		if len(rq.fields) == maxFields {
			return errHeadTooLarge
		}
		rq.fields = append(rq.fields, field{k, v})
		switch {
		case strings.EqualFold(k, "Host"):
			hosts++
			rq.host = v
		case strings.EqualFold(k, "Content-Length"):
			lengths++
			n, ok := parseLength(v)
			if !ok {
				return badRequest("bad Content-Length")
			}
			rq.length = n
		case strings.EqualFold(k, "Transfer-Encoding"):
			tes++
			te = v
		case strings.EqualFold(k, "Connection"):
			if rq.conn != "" {
				rq.conn += ","
			}
			rq.conn += v
		case strings.EqualFold(k, "Expect"):
			switch {
			case v == "": // nothing expected
			case strings.EqualFold(v, "100-continue") && rq.minor == 1:
				rq.expect = true
			default:
				return &reqError{http.StatusExpectationFailed, "unknown expectation"}
			}
		case strings.EqualFold(k, "Upgrade"):
			rq.upgrade = v
		case strings.EqualFold(k, "Cookie"):
			rq.cookie = true
		}
	}
	switch {
	case hosts > 1:
		return badRequest("more than one Host")
	case hosts == 0 && rq.minor == 1:
		return badRequest("no Host")
	case !validHost(rq.host):
		return badRequest("bad Host")
	case lengths > 1:
		return badRequest("more than one Content-Length")
	case tes > 1:
		return badRequest("more than one Transfer-Encoding")
	}
	if absHost != "" {
		rq.host = absHost
	}
	if tes == 1 {
		switch {
		case lengths > 0:
			return badRequest("Content-Length and Transfer-Encoding")
		case rq.minor == 0:
			return badRequest("Transfer-Encoding in HTTP/1.0")
		case !strings.EqualFold(te, "chunked"):
			return &reqError{http.StatusNotImplemented, "unsupported Transfer-Encoding"}
		}
		rq.chunked = true
	}
	if rq.minor == 0 || hasTokenIn(rq.conn, "close") {
		// HTTP/1.0 keep-alive is not offered: one exchange per connection.
		rq.close = true
	}
	if !hasTokenIn(rq.conn, "upgrade") {
		rq.upgrade = ""
	}
	return nil
}

// parseLine parses the request line.
func (rq *request) parseLine(line string) error {
	sp := strings.IndexByte(line, ' ')
	if sp <= 0 || !validFieldName(line[:sp]) { // a method is a token
		return badRequest("bad request line")
	}
	rq.method = line[:sp]
	rest := line[sp+1:]
	sp = strings.IndexByte(rest, ' ')
	if sp <= 0 {
		return badRequest("bad request line")
	}
	rq.target, rest = rest[:sp], rest[sp+1:]
	switch rest {
	case "HTTP/1.1":
		rq.minor = 1
	case "HTTP/1.0":
		rq.minor = 0
	default:
		if len(rest) == 8 && strings.HasPrefix(rest, "HTTP/") && isDigit(rest[5]) && rest[6] == '.' && isDigit(rest[7]) {
			return &reqError{http.StatusHTTPVersionNotSupported, "unsupported HTTP version"}
		}
		return badRequest("bad request line")
	}
	for i := 0; i < len(rq.target); i++ {
		if c := rq.target[i]; c <= ' ' || c >= 0x7f {
			return badRequest("bad request target")
		}
	}
	if rq.method == http.MethodConnect {
		return &reqError{http.StatusNotImplemented, "CONNECT"}
	}
	switch t := rq.target; {
	case t[0] == '/':
		if !validEscapes(pathOf(t)) {
			return badRequest("bad request target")
		}
	case t == "*":
		if rq.method != http.MethodOptions {
			return badRequest("bad request target")
		}
	default:
		// absolute-form: the authority is the host (RFC 9112 section 3.2.2),
		// and the app gets the origin-form.
		u, err := url.ParseRequestURI(t)
		if err != nil || !(u.Scheme == "http" || u.Scheme == "https") || u.Host == "" || u.User != nil {
			return badRequest("bad request target")
		}
		rq.target, rq.host = u.RequestURI(), u.Host
	}
	return nil
}

// validEscapes reports whether every % in path starts a two-digit hex
// escape, as net/http requires of a request's path.
func validEscapes(path string) bool {
	for i := 0; i < len(path); i++ {
		if path[i] == '%' {
			if i+2 >= len(path) || !isHex(path[i+1]) || !isHex(path[i+2]) {
				return false
			}
			i += 2
		}
	}
	return true
}

func isHex(c byte) bool { return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// parseLength parses a Content-Length value: digits only, at most 18.
func parseLength(v string) (int64, bool) {
	if v == "" || len(v) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		if !isDigit(v[i]) {
			return 0, false
		}
		n = n*10 + int64(v[i]-'0')
	}
	return n, true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// validFieldValue reports whether v has no control character but HTAB
// (obs-text, bytes 0x80 and up, is allowed).
func validFieldValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// validHost reports whether h can be a Host value: visible ASCII with
// none of the characters that end an authority.
func validHost(h string) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("/?#@\\\"<>{}|^`", c) >= 0 {
			return false
		}
	}
	return true
}

// hasTokenIn reports whether the comma-separated list v names token
// (case-insensitive).
func hasTokenIn(v, token string) bool {
	for v != "" {
		var t string
		t, v, _ = strings.Cut(v, ",")
		if strings.EqualFold(strings.Trim(t, " \t"), token) {
			return true
		}
	}
	return false
}

// chunkedBody reads a chunked request body strictly: a chunk size of at
// most 16 hex digits, extensions without control characters, CRLF after
// each line and each chunk's data; the trailer section is read and
// dropped.
type chunkedBody struct {
	br   *bufio.Reader
	left int64 // bytes left in the current chunk
	// state: 0 = at a chunk-size line, 1 = in data, 2 = done
	state int
	err   error
}

var errBadChunk = badRequest("bad chunked body")

func (cb *chunkedBody) Read(p []byte) (int, error) {
	if cb.err != nil {
		return 0, cb.err
	}
	for cb.state == 0 {
		n, err := cb.sizeLine()
		if err != nil {
			cb.err = err
			return 0, err
		}
		if n == 0 {
			if err := cb.trailer(); err != nil {
				cb.err = err
				return 0, err
			}
			cb.state, cb.err = 2, io.EOF
			return 0, io.EOF
		}
		cb.left, cb.state = n, 1
	}
	if cb.state == 2 {
		return 0, io.EOF
	}
	if int64(len(p)) > cb.left {
		p = p[:cb.left]
	}
	n, err := cb.br.Read(p)
	cb.left -= int64(n)
	if cb.left == 0 {
		if err == nil {
			err = cb.crlf()
		}
		cb.state = 0
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		cb.err = err
	}
	return n, err
}

// sizeLine reads a chunk-size line and returns the size.
func (cb *chunkedBody) sizeLine() (int64, error) {
	line, err := cb.line(maxChunkLine)
	if err != nil {
		return 0, err
	}
	size, ext, hasExt := strings.Cut(line, ";")
	if hasExt {
		size = strings.TrimRight(size, " \t") // BWS, allowed before an extension only
	}
	if size == "" || len(size) > 16 {
		return 0, errBadChunk
	}
	var n int64
	for i := 0; i < len(size); i++ {
		c := size[i]
		var d byte
		switch {
		case isDigit(c):
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, errBadChunk
		}
		if n > (1<<62)>>4 {
			return 0, errBadChunk
		}
		n = n<<4 | int64(d)
	}
	if !validFieldValue(ext) {
		return 0, errBadChunk
	}
	return n, nil
}

// trailer reads the trailer section up to its empty line.
func (cb *chunkedBody) trailer() error {
	total := 0
	for {
		line, err := cb.line(maxTrailer)
		if err != nil {
			return err
		}
		if line == "" {
			return nil
		}
		if total += len(line); total > maxTrailer {
			return errBadChunk
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 || !validFieldName(line[:colon]) || !validFieldValue(line[colon+1:]) {
			return errBadChunk
		}
	}
}

// line reads one CRLF-ended line of at most limit bytes, without its CRLF.
func (cb *chunkedBody) line(limit int) (string, error) {
	var acc []byte
	for {
		b, err := cb.br.ReadSlice('\n')
		if len(acc)+len(b) > limit {
			return "", errBadChunk
		}
		if err == bufio.ErrBufferFull {
			acc = append(acc, b...)
			continue
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		if acc != nil {
			b = append(acc, b...)
		}
		if len(b) < 2 || b[len(b)-2] != '\r' || bytes.IndexByte(b[:len(b)-2], '\r') >= 0 {
			return "", errBadChunk
		}
		return string(b[:len(b)-2]), nil
	}
}

// crlf reads the CRLF after a chunk's data.
func (cb *chunkedBody) crlf() error {
	b, err := cb.br.Peek(2)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	if b[0] != '\r' || b[1] != '\n' {
		return errBadChunk
	}
	cb.br.Discard(2)
	return nil
}
