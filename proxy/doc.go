// Package proxy is the agent's traffic front: a reverse proxy on the app's
// public port that balances every request among the app's ready processes,
// one per slot, each on its own loopback port. It holds requests while no
// process is ready, replays a request once (to another process when there
// is one) when the app's connection failed before any response byte,
// drains a process's requests in flight before it is stopped (Gate) and
// moves a slot's traffic to a new process while the old one finishes
// (Route).
//
// The supervisor drives it slot by slot with Ready, NotReady, Gate and
// Route, and Down for the whole app; the proxy never looks at processes
// itself. Requests are streamed both ways; the path to a process is a small
// HTTP/1.1 client over a pool of keep-alive connections whose idle members
// are closed before Node's own 5 s keep-alive timeout.
package proxy
