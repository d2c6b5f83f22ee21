// Command agent supervises one Node.js web app on an EC2 instance: it keeps
// the app running within its memory, records why it ever died, answers the
// load balancer's health check and tells systemd the truth. Invoked as
// agentctl, it talks to the running agent.
package main

import (
	_ "embed"
	"os"

	"agent/cli"
)

// version is stamped at build time: -ldflags "-X main.version=...".
var version = "dev"

//go:embed agent.toml.example
var exampleConfig []byte

func main() {
	os.Exit(cli.Main(os.Args, cli.Build{Version: version, ExampleConfig: exampleConfig}, os.Stdout, os.Stderr))
}
