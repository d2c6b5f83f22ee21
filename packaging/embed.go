// Package packaging holds the systemd unit that ships with the agent, embedded
// so that `agent install` can write it on hosts installed without a package.
package packaging

import _ "embed"

// Unit is the contents of agent.service, the systemd unit for the agent.
//
//go:embed agent.service
var Unit []byte
