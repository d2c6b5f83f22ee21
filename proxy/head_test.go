package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
)

// relay reads the app's response in from a connection and writes what the
// client would get, for a client request rq.
func relay(t *testing.T, rq request, in string) (out string, rs upResp, err error) {
	t.Helper()
	uc := &upConn{br: bufio.NewReaderSize(strings.NewReader(in), 64)}
	var buf bytes.Buffer
	c := &clientConn{rq: rq, bw: bufio.NewWriter(&buf), gone: make(chan struct{}), p: &Proxy{}}
	rs, err = readResponse(uc, &c.rq, nil)
	if err != nil {
		return "", rs, err
	}
	c.writeHead(&rs, "")
	err = c.copyBody(uc, &rs)
	c.bw.Flush()
	return buf.String(), rs, err
}

func TestRelayResponses(t *testing.T) {
	get11 := request{method: "GET", minor: 1}
	get10 := request{method: "GET", minor: 0, close: true}
	head := request{method: "HEAD", minor: 1}
	tests := []struct {
		name  string
		rq    request
		in    string
		out   string
		close bool
	}{
		{"length", get11,
			"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhello",
			"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello", false},
		{"chunked with trailer", get11,
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n",
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n", false},
		{"chunked to HTTP/1.0", get10,
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
			"HTTP/1.0 200 OK\r\n\r\nhello", false},
		{"duplicates and connection-listed", get11,
			"HTTP/1.1 404 Not Found\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nConnection: X-Private\r\nX-Private: no\r\nContent-Length: 0\r\n\r\n",
			"HTTP/1.1 404 Not Found\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n", false},
		{"http/1.0 until close, chunked to the client", get11,
			"HTTP/1.0 200 OK\r\n\r\nuntil close",
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nuntil close\r\n0\r\n\r\n", true},
		{"connection close", get11,
			"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true},
		{"interim answers dropped", get11,
			"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
			"HTTP/1.1 204 No Content\r\n\r\n", false},
		{"head keeps its length", head,
			"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
			"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", false},
		{"status without reason", get11,
			"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
			"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, rs, err := relay(t, tt.rq, tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if out != tt.out {
				t.Fatalf("client got\n%q\nwant\n%q", out, tt.out)
			}
			if rs.close != tt.close {
				t.Fatalf("close = %v, want %v", rs.close, tt.close)
			}
		})
	}
}

// TestRelayRefusesAmbiguousResponses: a response whose framing could be
// read two ways is refused before a byte reaches the client.
func TestRelayRefusesAmbiguousResponses(t *testing.T) {
	get := request{method: "GET", minor: 1}
	for _, in := range []string{
		"garbage\r\n\r\n",
		"HTTP/1.1 2000 OK\r\n\r\n",
		"HTTP/1.1 099 Odd\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
		"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX A: b\r\n\r\n",
		"\r\nHTTP/1.1 200 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: " + strings.Repeat("9", 19) + "\r\n\r\n",
		"HTTP/1.1 200 OK\r\n" + strings.Repeat("X-Big: "+strings.Repeat("b", 1000)+"\r\n", 70) + "\r\n",
	} {
		if out, rs, err := relay(t, get, in); err == nil {
			t.Errorf("%q: relayed as %d: %q", in, rs.code, out)
		}
	}
}

// TestRelayCutBodies: a body the app cuts short is an error, so the
// client's connection is aborted rather than the response taken as whole.
func TestRelayCutBodies(t *testing.T) {
	get := request{method: "GET", minor: 1}
	for _, in := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n12345678901234567\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y",
	} {
		if _, _, err := relay(t, get, in); err == nil {
			t.Errorf("%q: taken as complete", in)
		}
	}
}

func FuzzRelayResponse(f *testing.F) {
	f.Add("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
	f.Add("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: y\r\n\r\n")
	f.Add("HTTP/1.0 101 Switching\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		out, rs, err := relay(t, request{method: "GET", minor: 1}, in)
		if err != nil || rs.code == 101 {
			return
		}
		// Whatever is relayed is one well-framed response by net/http's
		// reading.
		checkOneResponse(t, out)
	})
}

// checkOneResponse fails unless out is exactly one complete response as
// net/http's client reads it.
func checkOneResponse(t *testing.T, out string) {
	t.Helper()
	br := bufio.NewReader(strings.NewReader(out))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("relayed %q: %v", out, err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatalf("relayed %q: body: %v", out, err)
	}
	if n := br.Buffered(); n > 0 && !resp.Close {
		t.Fatalf("relayed %q: %d bytes after the response", out, n)
	}
}
