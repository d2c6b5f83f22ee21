//go:build !linux

package main

import (
	"context"
	"errors"
	"io"
)

// runBench needs /proc and the agent's upgrades: elsewhere it refuses.
func runBench(context.Context, config, io.Writer) (results, string, error) {
	return nil, "", errors.New("the benchmark runs on Linux only")
}
