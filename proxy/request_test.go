package proxy

import (
	"bufio"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// parsed is what a parser made of the first request of an input: the
// fields a proxy forwards by, and its body.
type parsed struct {
	method, target, host string
	fields               []string // "name: value", names lower-cased, sorted; Host excluded
	chunked              bool
	length               int64 // without chunked: the body's length (0: none)
	body                 string
	bodyErr              bool
}

// ours parses in with the traffic port's reader. err is the refusal (a
// *reqError) or an I/O error (the input ended early).
func ours(in string) (parsed, error) {
	br := bufio.NewReaderSize(strings.NewReader(in), 64) // small: heads larger than the buffer too
	head, err := readHead(br, maxHeaderBytes)
	if err != nil {
		return parsed{}, err
	}
	var rq request
	if err := parseRequest(head, &rq); err != nil {
		return parsed{}, err
	}
	p := parsed{method: rq.method, target: rq.target, host: rq.host, chunked: rq.chunked}
	for _, f := range rq.fields {
		// net/http moves Host out of the fields, and drops a chunked
		// Transfer-Encoding once it has decoded it.
		if !strings.EqualFold(f.k, "Host") && !(rq.chunked && strings.EqualFold(f.k, "Transfer-Encoding")) {
			p.fields = append(p.fields, strings.ToLower(f.k)+": "+f.v)
		}
	}
	slices.Sort(p.fields)
	var body io.Reader
	switch {
	case rq.chunked:
		body = &chunkedBody{br: br}
	case rq.length > 0:
		p.length = rq.length
		body = io.LimitReader(br, rq.length)
	}
	if body != nil {
		b, err := io.ReadAll(body)
		p.body = string(b)
		p.bodyErr = err != nil || (!rq.chunked && int64(len(b)) < rq.length)
	}
	return p, nil
}

// theirs parses in with net/http's own server (a real http.Server on one
// in-memory connection), and reports whether its handler was called.
func theirs(t testing.TB, in string) (parsed, bool) {
	srvSide, cliSide := net.Pipe()
	got := make(chan parsed, 1)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p := parsed{method: r.Method, target: r.RequestURI, host: r.Host, length: r.ContentLength}
			p.chunked = slices.Contains(r.TransferEncoding, "chunked")
			if p.chunked {
				p.length = 0
			}
			for k, vv := range r.Header {
				for _, v := range vv {
					p.fields = append(p.fields, strings.ToLower(k)+": "+v)
				}
			}
			slices.Sort(p.fields)
			b, err := io.ReadAll(r.Body)
			p.body, p.bodyErr = string(b), err != nil
			select {
			case got <- p:
			default:
			}
			panic(http.ErrAbortHandler) // one request is all this looks at
		}),
		ErrorLog: nil,
	}
	srv.SetKeepAlivesEnabled(false)
	srv.ErrorLog = discardLog
	ln := &oneConnListener{c: srvSide, done: make(chan struct{})}
	go srv.Serve(ln)
	defer srv.Close()
	go func() {
		cliSide.SetWriteDeadline(time.Now().Add(2 * time.Second))
		cliSide.Write([]byte(in))
		// Read whatever the server says; ending the write side lets it see
		// the end of the input.
		go io.Copy(io.Discard, cliSide)
		cliSide.Close()
	}()
	select {
	case p := <-got:
		return p, true
	case <-ln.done:
		// The connection ended, which the server does after its handler
		// returns: if the handler ran, its result is here.
		select {
		case p := <-got:
			return p, true
		default:
			return parsed{}, false
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("net/http neither answered nor closed for %q", in)
		return parsed{}, false
	}
}

// oneConnListener serves one connection, then reports through done when
// the server has closed it.
type oneConnListener struct {
	c    net.Conn
	used bool
	done chan struct{}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if l.used {
		<-l.done
		return nil, net.ErrClosed
	}
	l.used = true
	return &closeNotify{Conn: l.c, done: l.done}, nil
}
func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return &net.TCPAddr{} }

type closeNotify struct {
	net.Conn
	done chan struct{}
	once bool
}

func (c *closeNotify) Close() error {
	if !c.once {
		c.once = true
		close(c.done)
	}
	return c.Conn.Close()
}

// stricter is every refusal of the traffic port's reader where net/http's
// server accepts the request: each is a deliberate choice (request.go's
// comment says why), so the fuzzer allows these and no others.
var stricter = []string{
	errBareLF.(*reqError).why,
	errBareCR.(*reqError).why,
	"obs-fold",
	"Content-Length and Transfer-Encoding",
	"more than one Content-Length",
	"Transfer-Encoding in HTTP/1.0",
	"bad request target",
	"bad chunked body",
	"empty lines before the request",
	"CONNECT",
	"bad Host",
}

// compare fails when the two parsers disagree in a way the traffic port
// must not: it accepts what net/http refuses, or both accept and differ.
func compare(t *testing.T, in string) {
	mine, err := ours(in)
	if err == nil && mine.target == "*" {
		return // net/http answers OPTIONS * itself; the proxy forwards it
	}
	theirP, theyAccept := theirs(t, in)
	var re *reqError
	switch {
	case err != nil && !errors.As(err, &re):
		// The input ended early: nothing to compare (net/http may have
		// run its handler on a head and a short body).
		return
	case err != nil && theyAccept:
		if !slices.Contains(stricter, re.why) {
			t.Fatalf("%q: refused (%d %s) but net/http accepts it as %+v", in, re.code, re.why, theirP)
		}
	case err == nil && !theyAccept:
		if mine.bodyErr {
			return // a short body: net/http gave up on it too
		}
		t.Fatalf("%q: accepted as %+v, net/http refuses it", in, mine)
	case err == nil:
		if mine.bodyErr || theirP.bodyErr {
			return
		}
		if mine.method != theirP.method || mine.host != theirP.host ||
			(strings.HasPrefix(theirP.target, "/") && mine.target != theirP.target) ||
			!slices.Equal(mine.fields, theirP.fields) ||
			mine.chunked != theirP.chunked || mine.length != theirP.length || mine.body != theirP.body {
			t.Fatalf("%q:\n ours     %+v\n net/http %+v", in, mine, theirP)
		}
	}
}

var requestSeeds = []string{
	"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /x?y=1 HTTP/1.0\r\n\r\n",
	"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
	"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
	"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
	"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
	"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
	"GET / HTTP/1.1\nHost: a\n\n",
	"GET http://h:8/p?q HTTP/1.1\r\nHost: a\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
	"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX-A: \x00\r\n\r\n",
	"\r\nGET / HTTP/1.1\r\nHost: a\r\nCookie: a=b\r\nCookie: c=d\r\n\r\n",
}

func FuzzRequestAgainstNetHTTP(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		compare(t, in)
	})
}

// TestRequestAgainstNetHTTP runs the differential check on the seeds and
// on the smuggling vectors, every time.
func TestRequestAgainstNetHTTP(t *testing.T) {
	for _, in := range requestSeeds {
		compare(t, in)
	}
}

func TestRequestRefusals(t *testing.T) {
	tests := []struct {
		name, in string
		code     int
	}{
		{"CL and TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"TE and CL", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", 400},
		{"two CL, same", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n", 400},
		{"two CL, differing", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n", 400},
		{"CL list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\n", 400},
		{"CL sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\n", 400},
		{"CL hex", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x4\r\n\r\n", 400},
		{"CL overflow", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400},
		{"CL empty", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400},
		{"TE gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
		{"TE chunked, gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 501},
		{"TE identity", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501},
		{"TE twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"TE with VT", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n", 400},
		{"TE in 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"space before colon", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 4\r\n\r\n", 400},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400},
		{"bare LF", "GET / HTTP/1.1\nHost: a\r\n\r\n", 400},
		{"bare LF end", "GET / HTTP/1.1\r\nHost: a\n\n", 400},
		{"bare CR", "GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400},
		{"NUL in value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400},
		{"NUL in name", "GET / HTTP/1.1\r\nHost: a\r\nX\x00: b\r\n\r\n", 400},
		{"empty name", "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
		{"bad version", "GET / HTTP/1.x\r\nHost: a\r\n\r\n", 400},
		{"HTTP/2", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505},
		{"space in target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 501},
		{"unknown expectation", "GET / HTTP/1.1\r\nHost: a\r\nExpect: later\r\n\r\n", 417},
		{"too large", "GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("x", maxHeaderBytes) + "\r\n\r\n", 431},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ours(tt.in)
			var re *reqError
			if !errors.As(err, &re) || re.code != tt.code {
				t.Fatalf("got %v, want a %d", err, tt.code)
			}
		})
	}
}

func TestChunkedBodyRefusals(t *testing.T) {
	for _, body := range []string{
		"12345678901234567\r\n",        // more than 16 hex digits
		"fffffffffffffffff\r\nx\r\n",   // overflow
		"-1\r\n\r\n",                   // negative
		"g\r\nx\r\n0\r\n\r\n",          // not hex
		"3\r\nabcX\r\n0\r\n\r\n",       // no CRLF after the data
		"3;ext\nabc\r\n0\r\n\r\n",      // bare LF after an extension
		"3;e=\x01\r\nabc\r\n0\r\n\r\n", // control character in an extension
		"3\r\nabc\r\n0\r\nX\x00: y\r\n\r\n",
		"3\r\nab", // cut short
	} {
		in := "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body
		p, err := ours(in)
		if err != nil {
			t.Fatalf("%q: head refused: %v", body, err)
		}
		if !p.bodyErr {
			t.Errorf("%q: body read as %q", body, p.body)
		}
	}
}

func TestRequestAccepts(t *testing.T) {
	p, err := ours("GET http://example.com:8080/a?b=c HTTP/1.1\r\nHost: other\r\nX-A:  v \t\r\n\r\n")
	if err != nil {
		t.Fatal(err)
	}
	if p.target != "/a?b=c" || p.host != "example.com:8080" || !slices.Equal(p.fields, []string{"x-a: v"}) {
		t.Fatalf("absolute-form: %+v", p)
	}
	p, err = ours("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")
	if err != nil || !p.chunked || p.body != "abc" || p.bodyErr {
		t.Fatalf("chunked: %+v %v", p, err)
	}
}

var discardLog = log.New(io.Discard, "", 0)
