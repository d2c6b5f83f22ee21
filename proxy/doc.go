// Package proxy is the agent's traffic front: a reverse proxy on the app's
// public port that forwards every request to the current app process on its
// loopback port, holds requests while the app (re)starts, replays a request
// once when the app's connection failed before any response byte, drains the
// requests in flight before a restart (Gate) and moves traffic to a new
// process while the old one finishes (Switch).
//
// The supervisor drives it with Ready, NotReady and Down; the proxy never
// looks at processes itself. Requests are streamed both ways; the path to the
// app is a small HTTP/1.1 client over a pool of keep-alive connections whose
// idle members are closed before Node's own 5 s keep-alive timeout.
package proxy
