// Package faults is the agent's black-box fault suite. Its tests build the
// agent binary, run it as a subprocess with real Node apps and real clients,
// inflict one fault each (app killed, stopped, crash-looping or never
// listening; log sink gone or stuck; /dev/kmsg unreadable; bad configs;
// a squatted control socket path; floods and garbage on the health port and
// the control socket; a second agent) and check that the agent recovers or
// refuses with a clear error and loses nothing. The app faults run with
// the app owning its port and again behind the agent's [proxy], under a
// request loop that counts as a load balancer would (kept connections,
// never retried); behind the proxy no request may be lost. They print a
// table of what happened; with FAULTS_TABLE=path (relative to the module
// root) they also write it there as Markdown:
//
//	FAULTS_TABLE=faults/results.md go test -count=1 -v ./faults/
//
// Some rows need root (a private mount namespace for /dev/kmsg) and skip
// with a message otherwise. The package has no code of its own.
package faults
