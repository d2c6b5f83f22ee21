package proxy

import (
	"bufio"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

func TestReadResponseHeads(t *testing.T) {
	get, _ := http.NewRequest("GET", "http://x/", nil)
	head, _ := http.NewRequest("HEAD", "http://x/", nil)
	tests := []struct {
		name     string
		req      *http.Request
		in       string
		fast     bool
		code     int
		length   int64
		close    bool
		body     string
		header   http.Header
		trailers http.Header
	}{
		{name: "length", req: get, fast: true, code: 200, length: 5, body: "hello",
			in:     "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhello",
			header: http.Header{"Content-Type": {"text/plain"}, "Content-Length": {"5"}}},
		{name: "chunked with trailer", req: get, fast: true, code: 200, length: -1, body: "hello world",
			in:       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n",
			header:   http.Header{},
			trailers: http.Header{http.TrailerPrefix + "X-Sum": {"42"}}},
		{name: "duplicates and connection-listed", req: get, fast: true, code: 404, length: 0,
			in:     "HTTP/1.1 404 Not Found\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nConnection: X-Private\r\nX-Private: no\r\nContent-Length: 0\r\n\r\n",
			header: http.Header{"Set-Cookie": {"a=1", "b=2"}, "Content-Length": {"0"}}},
		{name: "http/1.0 closes", req: get, fast: true, code: 200, length: -1, close: true, body: "until close",
			in: "HTTP/1.0 200 OK\r\n\r\nuntil close", header: http.Header{}},
		{name: "connection close", req: get, fast: true, code: 200, length: 2, close: true, body: "ok",
			in: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", header: http.Header{"Content-Length": {"2"}}},
		{name: "interim answers dropped", req: get, fast: true, code: 204, length: 0,
			in: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", header: http.Header{}},
		{name: "head has no body", req: head, fast: true, code: 200, length: 0,
			in: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", header: http.Header{"Content-Length": {"100"}}},
		{name: "folded line: slow path", req: get, code: 200, length: 2, body: "ok",
			in: "HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 2\r\n\r\nok", header: http.Header{"X-A": {"one two"}, "Content-Length": {"2"}}},
		{name: "bare LF: slow path", req: get, code: 200, length: 2, body: "ok",
			in: "HTTP/1.1 200 OK\nContent-Length: 2\n\nok", header: http.Header{"Content-Length": {"2"}}},
		{name: "length and chunked: slow path", req: get, code: 200, length: -1, body: "hi",
			in: "HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", header: http.Header{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br := bufio.NewReaderSize(strings.NewReader(tt.in), upReadBuf)
			if _, ok, err := readHeadFast(bufio.NewReaderSize(strings.NewReader(tt.in), upReadBuf), http.Header{}); ok != tt.fast || err != nil {
				t.Fatalf("fast path = %v (%v), want %v", ok, err, tt.fast)
			}
			uc := &upConn{br: br}
			dst := http.Header{}
			rs, err := readResponse(uc, tt.req, dst)
			if err != nil {
				t.Fatal(err)
			}
			if rs.code != tt.code || rs.length != tt.length || rs.close != tt.close {
				t.Fatalf("code %d length %d close %v; want %d %d %v", rs.code, rs.length, rs.close, tt.code, tt.length, tt.close)
			}
			var body []byte
			if rs.body != nil {
				body, err = io.ReadAll(rs.body)
				if err != nil {
					t.Fatal(err)
				}
			}
			if string(body) != tt.body {
				t.Fatalf("body %q, want %q", body, tt.body)
			}
			if rs.chunked && !readTrailer(br, dst) {
				t.Fatal("trailer section incomplete")
			}
			for k, v := range rs.trailer {
				dst[http.TrailerPrefix+k] = v
			}
			want := http.Header{}
			for k, v := range tt.header {
				want[k] = v
			}
			for k, v := range tt.trailers {
				want[k] = v
			}
			if !reflect.DeepEqual(dst, want) {
				t.Fatalf("header %v, want %v", dst, want)
			}
		})
	}
}

func TestReadResponseRejectsGarbage(t *testing.T) {
	get, _ := http.NewRequest("GET", "http://x/", nil)
	for _, in := range []string{
		"garbage\r\n\r\n",
		"HTTP/1.1 2000 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
	} {
		uc := &upConn{br: bufio.NewReaderSize(strings.NewReader(in), upReadBuf)}
		if rs, err := readResponse(uc, get, http.Header{}); err == nil {
			t.Errorf("%q: accepted as %d", in, rs.code)
		}
	}
}

func FuzzReadResponse(f *testing.F) {
	f.Add("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
	f.Add("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: y\r\n\r\n")
	f.Add("HTTP/1.0 101 Switching\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
	get, _ := http.NewRequest("GET", "http://x/", nil)
	f.Fuzz(func(t *testing.T, in string) {
		br := bufio.NewReaderSize(strings.NewReader(in), 64)
		uc := &upConn{br: br}
		dst := http.Header{}
		rs, err := readResponse(uc, get, dst)
		if err != nil {
			return
		}
		if rs.body != nil {
			io.Copy(io.Discard, rs.body)
		}
		if rs.chunked {
			readTrailer(br, dst)
		}
	})
}
