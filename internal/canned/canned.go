// Package canned holds the HTTP answers the agent gives itself, each built
// once so that writing one takes no lock and allocates nothing: the health
// page (its 200 page, its 503 with the state word, its 404 and 405), which
// both health.listen and the traffic port's health.path answer, and the
// traffic port's short errors.
//
// Every answer is a short body with its Content-Type and Content-Length,
// Cache-Control: no-store and X-Content-Type-Options: nosniff; a 405 says
// Allow: GET, HEAD, and an answer may carry a Retry-After. Nothing else is
// sent, so an answer reveals nothing but its words.
package canned

import (
	"net/http"
	"strconv"
	"strings"

	"agent/internal/lifecycle"
)

// Reply is one precomputed answer.
type Reply struct {
	code          int
	status        string // "200 OK"
	body          []byte
	contentType   []string
	contentLength []string
	retryAfter    []string // nil: none
	allow         []string // 405 only
}

// New returns the answer code with body, of the given Content-Type.
func New(code int, contentType, body string) *Reply {
	return &Reply{
		code:          code,
		status:        strconv.Itoa(code) + " " + http.StatusText(code),
		body:          []byte(body),
		contentType:   []string{contentType},
		contentLength: []string{strconv.Itoa(len(body))},
	}
}

// Text returns the answer code with a text/plain body.
func Text(code int, body string) *Reply { return New(code, textPlain, body) }

// Word returns the answer code whose body is word on a line of its own, as
// the health page says its state.
func Word(code int, word string) *Reply { return Text(code, word+"\n") }

// WithRetryAfter returns a copy of r that says Retry-After: seconds.
func (r *Reply) WithRetryAfter(seconds int) *Reply {
	c := *r
	c.retryAfter = []string{strconv.Itoa(seconds)}
	return &c
}

// Code returns the status code of r.
func (r *Reply) Code() int { return r.code }

// Write sends r on w, with its body unless body is false (HEAD). Header
// fields set on w before are dropped.
func (r *Reply) Write(w http.ResponseWriter, body bool) {
	h := w.Header()
	clear(h)
	h["Content-Type"] = r.contentType
	h["Content-Length"] = r.contentLength
	h["Cache-Control"] = hdrNoStore
	h["X-Content-Type-Options"] = hdrNoSniff
	if r.retryAfter != nil {
		h["Retry-After"] = r.retryAfter
	}
	if r.allow != nil {
		h["Allow"] = r.allow
	}
	w.WriteHeader(r.code)
	if body {
		w.Write(r.body)
	}
}

const textPlain = "text/plain; charset=utf-8"

// Page is the body of the health page while the app serves.
const Page = "<!DOCTYPE html>\n<html><head><title>ok</title></head><body>ok</body></html>\n"

var (
	hdrNoStore = []string{"no-store"}
	hdrNoSniff = []string{"nosniff"}

	// OK is the health page's 200: the app serves.
	OK = New(http.StatusOK, "text/html; charset=utf-8", Page)
	// NotFound answers a path other than the health page's.
	NotFound = Text(http.StatusNotFound, "not found\n")
	// NotAllowed answers a method other than GET and HEAD.
	NotAllowed = func() *Reply {
		r := Text(http.StatusMethodNotAllowed, "method not allowed\n")
		r.allow = []string{"GET, HEAD"}
		return r
	}()

	down = func() map[lifecycle.State]*Reply {
		m := make(map[lifecycle.State]*Reply)
		for _, s := range lifecycle.States() {
			m[s] = Word(http.StatusServiceUnavailable, string(s))
		}
		return m
	}()
)

// Down returns the health page's 503 saying state: built once for
// lifecycle's states; for any other word, built now from its printable
// ASCII alone, so that an odd one cannot break the response.
func Down(state lifecycle.State) *Reply {
	if r, ok := down[state]; ok {
		return r
	}
	return Word(http.StatusServiceUnavailable, strings.Map(printableASCII, string(state)))
}

func printableASCII(r rune) rune {
	if r < 0x21 || r > 0x7e {
		return -1
	}
	return r
}

// Serve answers req for the health page at path with cur, the answer for
// the app's state now: NotFound for another path, NotAllowed for a method
// other than GET and HEAD; no body for HEAD.
func Serve(w http.ResponseWriter, req *http.Request, path string, cur *Reply) {
	switch {
	case req.URL.Path != path:
		cur = NotFound
	case req.Method != http.MethodGet && req.Method != http.MethodHead:
		cur = NotAllowed
	}
	cur.Write(w, req.Method != http.MethodHead)
}

// HeadWriter is where WriteHead writes: a *bufio.Writer, say.
type HeadWriter interface {
	WriteString(s string) (int, error)
}

// WriteHead writes r's status line and fields in HTTP/1.1 wire form, with
// proto ("HTTP/1.1" or "HTTP/1.0") in the status line, and without the
// empty line that ends the head: the caller may add a field first.
func (r *Reply) WriteHead(w HeadWriter, proto string) {
	w.WriteString(proto)
	w.WriteString(" ")
	w.WriteString(r.status)
	w.WriteString("\r\nContent-Type: ")
	w.WriteString(r.contentType[0])
	w.WriteString("\r\nContent-Length: ")
	w.WriteString(r.contentLength[0])
	w.WriteString("\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n")
	if r.retryAfter != nil {
		w.WriteString("Retry-After: ")
		w.WriteString(r.retryAfter[0])
		w.WriteString("\r\n")
	}
	if r.allow != nil {
		w.WriteString("Allow: ")
		w.WriteString(r.allow[0])
		w.WriteString("\r\n")
	}
}

// Body returns r's body. It must not be modified.
func (r *Reply) Body() []byte { return r.body }
