package canned

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"agent/internal/lifecycle"
)

func TestServe(t *testing.T) {
	tests := []struct {
		name, method, path string
		cur                *Reply
		code               int
		ctype, body, allow string
	}{
		{"page", "GET", "/health.html", OK, 200, "text/html; charset=utf-8", Page, ""},
		{"page HEAD", "HEAD", "/health.html", OK, 200, "text/html; charset=utf-8", "", ""},
		{"down", "GET", "/health.html", Down(lifecycle.Backoff), 503, "text/plain; charset=utf-8", "backoff\n", ""},
		{"other path", "GET", "/", OK, 404, "text/plain; charset=utf-8", "not found\n", ""},
		{"other path HEAD", "HEAD", "/x", OK, 404, "text/plain; charset=utf-8", "", ""},
		{"other method", "POST", "/health.html", OK, 405, "text/plain; charset=utf-8", "method not allowed\n", "GET, HEAD"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			w.Header().Set("X-Left-Over", "1")
			Serve(w, httptest.NewRequest(tt.method, tt.path, nil), "/health.html", tt.cur)
			res := w.Result()
			if res.StatusCode != tt.code || w.Body.String() != tt.body {
				t.Errorf("%d %q, want %d %q", res.StatusCode, w.Body.String(), tt.code, tt.body)
			}
			want := map[string]string{
				"Content-Type": tt.ctype, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
				"Content-Length": res.Header.Get("Content-Length"), "Allow": tt.allow,
			}
			for k := range res.Header {
				if _, ok := want[k]; !ok {
					t.Errorf("header %s: %q", k, res.Header.Get(k))
				}
			}
			for k, v := range want {
				if got := res.Header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

func TestDown(t *testing.T) {
	for _, s := range lifecycle.States() {
		if r := Down(s); r != Down(s) || r.Code() != 503 || string(r.body) != string(s)+"\n" {
			t.Errorf("Down(%q) = %d %q, built once: %v", s, r.Code(), r.body, r == Down(s))
		}
	}
	if r := Down("odd word\r\nX-Evil: 1"); string(r.body) != "oddwordX-Evil:1\n" || r.contentLength[0] != "16" {
		t.Errorf("odd word: %q, length %s", r.body, r.contentLength[0])
	}
}

func TestWithRetryAfter(t *testing.T) {
	base := Down(lifecycle.Starting)
	r := base.WithRetryAfter(5)
	w := httptest.NewRecorder()
	r.Write(w, true)
	if got := w.Result().Header.Get("Retry-After"); got != "5" || w.Body.String() != "starting\n" {
		t.Errorf("Retry-After %q, body %q", got, w.Body.String())
	}
	w = httptest.NewRecorder()
	base.Write(w, true)
	if got := w.Result().Header.Get("Retry-After"); got != "" {
		t.Errorf("the shared answer got Retry-After %q", got)
	}
}

type nopWriter struct{ h http.Header }

func (w *nopWriter) Header() http.Header         { return w.h }
func (w *nopWriter) WriteHeader(int)             {}
func (w *nopWriter) Write(p []byte) (int, error) { return len(p), nil }

func TestServeAllocatesNothing(t *testing.T) {
	req := httptest.NewRequest("GET", "/health.html", nil)
	w := &nopWriter{h: make(http.Header)}
	if n := testing.AllocsPerRun(100, func() { Serve(w, req, "/health.html", OK) }); n != 0 {
		t.Errorf("%v allocations per answer, want 0", n)
	}
}
