// Package agent wires the agent's parts together: the config and its
// generations, the supervisor, the observers of package probe, the front
// (front.go: the proxy's routing, the health pages and systemd
// notification, driven by the supervisor's events from one goroutine), the
// status model, and the control API that agentctl talks to. ARCHITECTURE.md
// at the repository's root has the flows.
package agent
