//go:build !linux

package main

import (
	"context"
	"errors"
	"io"
)

// runBench needs /proc, pidfds and nginx: elsewhere it refuses.
func runBench(context.Context, config, io.Writer) (*results, string, error) {
	return nil, "", errors.New("the benchmark runs on Linux only")
}
