package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"strconv"
	"strings"
)

// maxFastFields is the most header fields the fast response parser takes;
// a response with more goes through http.ReadResponse.
const maxFastFields = 48

var (
	crlfcrlf = []byte("\r\n\r\n")
	lflf     = []byte("\n\n")

	errBadLength = errors.New("bad Content-Length in response")
)

// upResp is the app's response as the forwarding loop needs it.
type upResp struct {
	code    int
	length  int64     // -1: not known (chunked, or until the app closes)
	body    io.Reader // nil: no body
	close   bool      // the connection cannot be reused afterwards
	head    string    // the raw head, for a 101
	trailer http.Header
	// limited reports whether body is uc.lr, whose N must reach 0 for the
	// body to be complete.
	limited bool
	chunked bool
}

// field is one header line of a response head, as substrings of the head.
type field struct{ k, v string }

// readHeadFast parses a response head that sits whole in br's buffer,
// copying its end-to-end fields into h. It consumes nothing and reports
// ok = false when the head is in a form it does not take (larger than the
// buffer, bare LF line ends, folded lines, odd names, many fields); the
// caller then uses http.ReadResponse, which judges it fully. err is an
// I/O error while waiting for the head.
func readHeadFast(br *bufio.Reader, h http.Header) (rs upResp, ok bool, err error) {
	var buf []byte
	end := -1
	for {
		buf, _ = br.Peek(br.Buffered())
		if i := bytes.Index(buf, crlfcrlf); i >= 0 {
			end = i + 4
			break
		}
		if bytes.Contains(buf, lflf) || br.Buffered() == br.Size() {
			return rs, false, nil
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return rs, false, err
		}
	}
	head := string(buf[:end])

	line, rest, _ := strings.Cut(head, "\r\n")
	if len(line) < 12 || (line[:9] != "HTTP/1.1 " && line[:9] != "HTTP/1.0 ") || (len(line) > 12 && line[12] != ' ') {
		return rs, false, nil
	}
	code, cerr := strconv.Atoi(line[9:12])
	if cerr != nil || code < 100 {
		return rs, false, nil
	}
	rs.code, rs.length, rs.head = code, -1, head
	rs.close = line[7] == '0' // HTTP/1.0: one response per connection

	var fields [maxFastFields]field
	n := 0
	var conn, te string
	haveLength := false
	for {
		line, rest, _ = strings.Cut(rest, "\r\n")
		if line == "" {
			break
		}
		if n == maxFastFields || line[0] == ' ' || line[0] == '\t' {
			return rs, false, nil
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 || !validFieldName(line[:colon]) {
			return rs, false, nil
		}
		k := textproto.CanonicalMIMEHeaderKey(line[:colon])
		v := strings.Trim(line[colon+1:], " \t")
		switch k {
		case "Content-Length":
			l, err := strconv.ParseInt(v, 10, 64)
			if err != nil || l < 0 || (haveLength && l != rs.length) {
				return rs, false, nil // ReadResponse gives the precise error
			}
			rs.length, haveLength = l, true
		case "Transfer-Encoding":
			if te != "" {
				return rs, false, nil
			}
			te = v
		case "Connection":
			if conn != "" {
				conn += ","
			}
			conn += v
		}
		if isHopHeader(k) {
			continue
		}
		fields[n] = field{k, v}
		n++
	}
	if te != "" {
		if haveLength || !strings.EqualFold(te, "chunked") {
			return rs, false, nil
		}
		rs.chunked = true
		rs.length = -1
	}
	if conn != "" && hasToken([]string{conn}, "close") {
		rs.close = true
	} else if rs.close && hasToken([]string{conn}, "keep-alive") {
		rs.close = false
	}

	vals := make([]string, n)
	for i := 0; i < n; i++ {
		f := fields[i]
		if conn != "" && hasToken([]string{conn}, f.k) {
			continue
		}
		if prev, dup := h[f.k]; dup {
			h[f.k] = append(prev, f.v)
			continue
		}
		vals[i] = f.v
		h[f.k] = vals[i : i+1 : i+1]
	}
	br.Discard(end)
	return rs, true, nil
}

// validFieldName reports whether s is a token (RFC 9110 section 5.6.2).
func validFieldName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}

// readResponse reads the app's response head to r (dropping 1xx interim
// answers but a 101), copies its end-to-end header fields into dst and
// sets up the body reader.
func readResponse(uc *upConn, r *http.Request, dst http.Header) (upResp, error) {
	for {
		rs, ok, err := readHeadFast(uc.br, dst)
		if err != nil {
			return rs, err
		}
		if !ok {
			return readResponseSlow(uc, r, dst)
		}
		if rs.code < 200 && rs.code != http.StatusSwitchingProtocols {
			clear(dst) // an interim answer: its fields are not the response's
			continue
		}
		switch {
		case r.Method == http.MethodHead || rs.code < 200 || rs.code == http.StatusNoContent || rs.code == http.StatusNotModified:
			rs.length = 0
		case rs.chunked:
			rs.body = httputil.NewChunkedReader(uc.br)
		case rs.length >= 0:
			uc.lr = io.LimitedReader{R: uc.br, N: rs.length}
			rs.body, rs.limited = &uc.lr, true
		default:
			rs.body, rs.close = uc.br, true // until the app closes
		}
		return rs, nil
	}
}

// readResponseSlow is readResponse through http.ReadResponse, for heads
// the fast parser leaves alone.
func readResponseSlow(uc *upConn, r *http.Request, dst http.Header) (upResp, error) {
	resp, err := http.ReadResponse(uc.br, r)
	for err == nil && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
		resp, err = http.ReadResponse(uc.br, r)
	}
	if err != nil {
		return upResp{}, err
	}
	clear(dst)
	for k, vv := range resp.Header {
		if !isHopHeader(k) {
			dst[k] = vv
		}
	}
	if c := resp.Header["Connection"]; len(c) > 0 {
		dropConnectionListed(dst, c)
	}
	rs := upResp{code: resp.StatusCode, length: resp.ContentLength, close: resp.Close, body: resp.Body, trailer: resp.Trailer}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		var b strings.Builder
		b.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
		resp.Header.Write(&b)
		b.WriteString("\r\n")
		rs.head = b.String()
	}
	return rs, nil
}

// readTrailer reads the trailer section after a chunked body into dst as
// http.TrailerPrefix fields; it reports whether the section was complete.
func readTrailer(br *bufio.Reader, dst http.Header) bool {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return false
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			return true
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || !validFieldName(string(k)) {
			continue
		}
		key := textproto.CanonicalMIMEHeaderKey(string(k))
		if isHopHeader(key) || key == "Content-Length" {
			continue
		}
		dst[http.TrailerPrefix+key] = append(dst[http.TrailerPrefix+key], string(bytes.Trim(v, " \t")))
	}
}
