package proxy

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// The app's responses are read as strictly as the clients' requests: a
// response whose framing could be read two ways is answered 502 and its
// connection closed, never passed on or kept.

// maxResponseHead caps a response head from the app.
const maxResponseHead = 64 << 10

var (
	errBadResponse = errors.New("malformed response from upstream")
	// errClientWrite is a failure to write to the client: it left.
	errClientWrite = errors.New("write to client")
)

// field is one header line, as substrings of its head.
type field struct{ k, v string }

// upResp is the app's response as the forwarding loop needs it.
type upResp struct {
	code    int
	status  string // the status line after "HTTP/1.x ": "200 OK"
	length  int64  // -1: not known (chunked, or until the app closes)
	noBody  bool   // HEAD, 1xx, 204, 304
	chunked bool
	close   bool    // the connection cannot be reused afterwards
	head    string  // the raw head, for a 101
	upgrade string  // the Upgrade field of a 101
	fields  []field // the end-to-end fields, framing ones excepted
}

// readResponse reads the app's response head to rq (dropping 1xx interim
// answers but a 101) into rs, its end-to-end fields appended to fields.
func readResponse(uc *upConn, rq *request, fields []field) (upResp, error) {
	for {
		head, err := readHead(uc.br, maxResponseHead)
		if err != nil {
			var re *reqError
			if errors.As(err, &re) {
				return upResp{}, errBadResponse
			}
			return upResp{}, err
		}
		rs, err := parseResponse(head, fields)
		if err != nil {
			return rs, err
		}
		if rs.code < 200 && rs.code != http.StatusSwitchingProtocols {
			continue // an interim answer: the client gets its own 100
		}
		if rq.method == http.MethodHead || rs.code < 200 || rs.code == http.StatusNoContent || rs.code == http.StatusNotModified {
			rs.noBody = true
		} else if rs.length < 0 && !rs.chunked {
			rs.close = true // until the app closes
		}
		return rs, nil
	}
}

// parseResponse parses a response head strictly.
func parseResponse(head string, fields []field) (upResp, error) {
	rs := upResp{length: -1, head: head, fields: fields}
	if strings.HasPrefix(head, "\r\n") {
		return rs, errBadResponse
	}
	line, rest, _ := strings.Cut(head, "\r\n")
	if len(line) < 12 || (line[:9] != "HTTP/1.1 " && line[:9] != "HTTP/1.0 ") || (len(line) > 12 && line[12] != ' ') {
		return rs, errBadResponse
	}
	if !isDigit(line[9]) || !isDigit(line[10]) || !isDigit(line[11]) || line[9] == '0' || !validFieldValue(line[12:]) {
		return rs, errBadResponse
	}
	rs.code = int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
	rs.status = line[9:]
	if len(rs.status) == 3 {
		rs.status += " " + http.StatusText(rs.code)
	}
	rs.close = line[7] == '0' // HTTP/1.0: one response per connection
	var conn, te string
	lengths, tes := 0, 0
	for {
		line, rest, _ = strings.Cut(rest, "\r\n")
		if line == "" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return rs, errBadResponse
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 || !validFieldName(line[:colon]) {
			return rs, errBadResponse
		}
		k, v := line[:colon], strings.Trim(line[colon+1:], " \t")
		if !validFieldValue(v) {
			return rs, errBadResponse
		}
		if len(rs.fields) == maxFields {
			return rs, errBadResponse
		}
		switch {
		case strings.EqualFold(k, "Content-Length"):
			n, ok := parseLength(v)
			if !ok {
				return rs, errBadResponse
			}
			lengths++
			rs.length = n
			if rs.code == http.StatusNotModified || rs.code == http.StatusNoContent {
				rs.fields = append(rs.fields, field{k, v})
			}
			continue
		case strings.EqualFold(k, "Transfer-Encoding"):
			tes++
			te = v
			continue
		case strings.EqualFold(k, "Connection"):
			if conn != "" {
				conn += ","
			}
			conn += v
			continue
		case strings.EqualFold(k, "Upgrade"):
			rs.upgrade = v
		}
		if isHopHeader(k) {
			continue
		}
		rs.fields = append(rs.fields, field{k, v})
	}
	switch {
	case lengths > 1, tes > 1:
		return rs, errBadResponse
	case tes == 1:
		if lengths > 0 || !strings.EqualFold(te, "chunked") {
			return rs, errBadResponse
		}
		rs.chunked, rs.length = true, -1
	}
	if conn != "" {
		if hasTokenIn(conn, "close") {
			rs.close = true
		} else if rs.close && hasTokenIn(conn, "keep-alive") {
			rs.close = false
		}
		// Fields the Connection field names are hop-by-hop too.
		keep := rs.fields[:0]
		for _, f := range rs.fields {
			if !hasTokenIn(conn, f.k) {
				keep = append(keep, f)
			}
		}
		rs.fields = keep
	}
	return rs, nil
}

// writeHead writes the response head to the client, with cookie (the
// affinity Set-Cookie) when not empty. It reports false when the client
// has gone.
func (c *clientConn) writeHead(rs *upResp, cookie string) bool {
	bw := c.bw
	bw.WriteString(c.proto())
	bw.WriteByte(' ')
	bw.WriteString(rs.status)
	bw.WriteString("\r\n")
	for _, f := range rs.fields {
		bw.WriteString(f.k)
		bw.WriteString(": ")
		bw.WriteString(f.v)
		bw.WriteString("\r\n")
	}
	if cookie != "" {
		bw.WriteString("Set-Cookie: ")
		bw.WriteString(cookie)
		bw.WriteString("\r\n")
	}
	switch {
	case rs.noBody:
		if rs.length >= 0 && rs.code != http.StatusNotModified && rs.code != http.StatusNoContent {
			// HEAD: the length a GET would have.
			bw.WriteString("Content-Length: ")
			bw.Write(strconv.AppendInt(c.scratch[:0], rs.length, 10))
			bw.WriteString("\r\n")
		}
	case rs.length >= 0:
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(c.scratch[:0], rs.length, 10))
		bw.WriteString("\r\n")
	case c.rq.minor == 1:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	default:
		c.closeNow = true // HTTP/1.0 and no length: the end is the close
	}
	c.closeField()
	_, err := bw.WriteString("\r\n")
	c.wroteHead = true
	return err == nil
}

// copyBody copies the response body from the app to the client, flushing
// whenever the app has nothing more buffered (so an event stream goes out
// event by event, and a short answer in one write). An error is the app's
// (the response is cut), or errClientWrite.
func (c *clientConn) copyBody(uc *upConn, rs *upResp) error {
	if rs.noBody {
		return nil
	}
	chunkOut := rs.length < 0 && c.rq.minor == 1
	switch {
	case rs.chunked:
		return c.copyChunked(uc, chunkOut)
	case rs.length >= 0:
		return c.copyN(uc.br, rs.length, false)
	default:
		err := c.copyN(uc.br, -1, chunkOut)
		if err == io.EOF {
			err = nil
			if chunkOut {
				if _, werr := c.bw.WriteString("0\r\n\r\n"); werr != nil {
					return errClientWrite
				}
			}
		}
		return err
	}
}

// copyN copies n bytes (n < 0: until EOF, which it returns) from br to
// the client, each piece as a chunk when chunk is set.
func (c *clientConn) copyN(br *bufio.Reader, n int64, chunk bool) error {
	for n != 0 {
		if br.Buffered() == 0 {
			if err := c.bw.Flush(); err != nil {
				return errClientWrite
			}
		}
		b, err := br.Peek(1)
		if err != nil {
			if n < 0 && err == io.EOF {
				return io.EOF
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		b, _ = br.Peek(br.Buffered())
		if n >= 0 && int64(len(b)) > n {
			b = b[:n]
		}
		if chunk {
			c.bw.Write(strconv.AppendInt(c.scratch[:0], int64(len(b)), 16))
			c.bw.WriteString("\r\n")
		}
		if _, werr := c.bw.Write(b); werr != nil {
			return errClientWrite
		}
		if chunk {
			c.bw.WriteString("\r\n")
		}
		br.Discard(len(b))
		if n > 0 {
			n -= int64(len(b))
		}
	}
	return nil
}

// copyChunked copies a chunked body from the app, re-framed as chunks
// (chunkOut) or as the bytes until the close (an HTTP/1.0 client), with
// its trailer section when chunked.
func (c *clientConn) copyChunked(uc *upConn, chunkOut bool) error {
	cb := chunkedBody{br: uc.br}
	for {
		if uc.br.Buffered() == 0 {
			if err := c.bw.Flush(); err != nil {
				return errClientWrite
			}
		}
		n, err := cb.sizeLine()
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		if chunkOut {
			c.bw.Write(strconv.AppendInt(c.scratch[:0], n, 16))
			c.bw.WriteString("\r\n")
		}
		if err := c.copyN(uc.br, n, false); err != nil {
			return err
		}
		if err := cb.crlf(); err != nil {
			return err
		}
		if chunkOut {
			c.bw.WriteString("\r\n")
		}
	}
	if chunkOut {
		c.bw.WriteString("0\r\n")
	}
	// The trailer section: passed on to a chunked client, its framing
	// and hop-by-hop fields dropped.
	total := 0
	for {
		line, err := cb.line(maxTrailer)
		if err != nil {
			return err
		}
		if line == "" {
			break
		}
		if total += len(line); total > maxTrailer {
			return errBadChunk
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 || !validFieldName(line[:colon]) || !validFieldValue(line[colon+1:]) {
			return errBadChunk
		}
		k := line[:colon]
		if !chunkOut || isHopHeader(k) || strings.EqualFold(k, "Content-Length") {
			continue
		}
		c.bw.WriteString(line)
		c.bw.WriteString("\r\n")
	}
	if chunkOut {
		if _, err := c.bw.WriteString("\r\n"); err != nil {
			return errClientWrite
		}
	}
	return nil
}

// abort ends a response the app cut short: what was buffered goes out,
// then the connection closes without the end of the body, so the client
// cannot take it as complete.
func (c *clientConn) abort() {
	c.bw.Flush()
	c.closeNow = true
}

// validFieldName reports whether s is a token (RFC 9110 section 5.6.2).
func validFieldName(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}

func isTokenChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
