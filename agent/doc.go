// Package agent wires the agent's parts together: the config, the
// supervisor, the observers of package probe, systemd notification, the
// status model, and the control API that agentctl talks to.
package agent
