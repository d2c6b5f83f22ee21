package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"testing"

	"github.com/rs/zerolog"

	"agent/internal/clock"
)

// rawUpstream answers every request on every connection with a fixed
// hello-world response, allocating nothing per request.
func rawUpstream(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nhello world\n")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if err := skipHead(br); err != nil {
						return
					}
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// skipHead reads one request head (no body) up to its blank line.
func skipHead(br *bufio.Reader) error {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			return nil
		}
	}
}

// BenchmarkForward is one keep-alive client doing GETs through the proxy to
// a minimal upstream: the proxy's CPU and allocations per request.
func BenchmarkForward(b *testing.B) { benchForward(b, 1) }

// BenchmarkForwardThreeSlots is BenchmarkForward balanced over three
// upstreams.
func BenchmarkForwardThreeSlots(b *testing.B) { benchForward(b, 3) }

func benchForward(b *testing.B, slots int) {
	p := New(Config{Listen: "127.0.0.1:0"}, zerolog.Nop(), clock.Real{})
	if err := p.Listen(); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	for i := range slots {
		p.Ready(i, rawUpstream(b))
	}

	c, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := []byte("GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	br := bufio.NewReader(c)
	body := make([]byte, 12)
	exchange := func() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		// Status line and headers, then the 12-byte body.
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				b.Fatal(err)
			}
			if len(line) <= 2 {
				break
			}
			if bytes.HasPrefix(line, []byte("HTTP/1.1 ")) && !bytes.HasPrefix(line, []byte("HTTP/1.1 200")) {
				b.Fatalf("status %q", line)
			}
		}
		if _, err := io.ReadFull(br, body); err != nil {
			b.Fatal(err)
		}
	}
	exchange()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		exchange()
	}
}

// BenchmarkPick is the balancer's choice among three ready pools.
func BenchmarkPick(b *testing.B) {
	p := New(Config{}, zerolog.Nop(), clock.Real{})
	for i := range 3 {
		p.Ready(i, "127.0.0.1:1")
	}
	st := p.st.Load()
	b.ReportAllocs()
	for b.Loop() {
		st.pick(-1, nil)
	}
}
