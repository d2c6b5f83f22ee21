package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestRawIOWritesAllAndReads(t *testing.T) {
	a, b := tcpPair(t)
	rw := newRawIO(a)
	if _, ok := rw.(*rawIO); !ok {
		t.Fatalf("newRawIO(%T) = %T, want *rawIO", a, rw)
	}
	// More than the socket buffers hold: the write waits for the reader
	// (EAGAIN, then the poller) and goes on where it stopped.
	want := make([]byte, 8<<20)
	for i := range want {
		want[i] = byte(i * 7)
	}
	got := make(chan []byte, 1)
	go func() {
		var buf bytes.Buffer
		chunk := make([]byte, 4<<10) // a slow reader: the writer waits
		for {
			n, err := b.Read(chunk)
			buf.Write(chunk[:n])
			if err != nil {
				got <- buf.Bytes()
				return
			}
		}
	}()
	a.SetWriteDeadline(time.Now().Add(waitLong))
	if n, err := rw.Write(want); n != len(want) || err != nil {
		t.Fatalf("Write = %d, %v, want %d, nil", n, err, len(want))
	}
	a.(*net.TCPConn).CloseWrite()
	select {
	case g := <-got:
		if !bytes.Equal(g, want) {
			t.Fatalf("the reader got %d bytes, not what was written (%d)", len(g), len(want))
		}
	case <-time.After(waitLong):
		t.Fatal("the reader did not finish")
	}

	// Reads: what the peer sent, then io.EOF itself once it closed.
	b.Write([]byte("hello"))
	b.Close()
	a.SetReadDeadline(time.Now().Add(waitLong))
	all, err := io.ReadAll(rw)
	if err != nil || string(all) != "hello" {
		t.Fatalf("ReadAll = %q, %v", all, err)
	}
	var buf [8]byte
	if n, err := rw.Read(buf[:]); n != 0 || err != io.EOF {
		t.Fatalf("Read at the end = %d, %v, want io.EOF", n, err)
	}
}

func TestRawIODeadlineAndClose(t *testing.T) {
	a, _ := tcpPair(t)
	rw := newRawIO(a)
	var buf [8]byte
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := rw.Read(buf[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	a.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := rw.Read(buf[:])
		done <- err
	}()
	a.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read of a closed connection: %v, want net.ErrClosed", err)
		}
	case <-time.After(waitLong):
		t.Fatal("Close did not end a waiting Read")
	}
}
