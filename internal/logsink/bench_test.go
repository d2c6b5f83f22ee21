package logsink

import (
	"io"
	"testing"
)

// A 200-byte JSON line, about an app output line as the agent logs it.
var benchLine = []byte(`{"level":"info","time":"2026-11-22T10:00:00.123456789Z","app":"web","stream":"stdout","pid":1234,"message":"GET /api/items 200 12ms xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}` + "\n")

func BenchmarkSinkWrite(b *testing.B) {
	s := New(io.Discard, 1<<20)
	defer s.Close()
	b.SetBytes(int64(len(benchLine)))
	b.ReportAllocs()
	for b.Loop() {
		s.Write(benchLine)
	}
}

func BenchmarkSinkWriteParallel(b *testing.B) {
	s := New(io.Discard, 1<<20)
	defer s.Close()
	b.SetBytes(int64(len(benchLine)))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.Write(benchLine)
		}
	})
}
