// Command health runs the agent's health page alone, answering 200, for
// load tests of it beside a busy app (see run.sh).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"agent/internal/lifecycle"
	"agent/probe"

	"github.com/rs/zerolog"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "health:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:18081", "address to listen on")
	path := flag.String("path", "/health.html", "path of the health page")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	log := zerolog.New(os.Stderr).With().Timestamp().Logger().Level(zerolog.InfoLevel)
	h := probe.NewHealthServer(*listen, *path, log)
	h.Set(lifecycle.Running, true)
	if err := h.Listen(); err != nil {
		return err
	}
	return h.Run(ctx)
}
