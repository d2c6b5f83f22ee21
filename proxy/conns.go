package proxy

import (
	"net"
	"net/http"

	"agent/internal/connlimit"
)

// connLimiter is the traffic port's listener: connlimit's, which closes the
// longest idle keep-alive connections first at the cap (see its package
// comment for the order), under the names the proxy uses.
type connLimiter struct {
	*connlimit.Listener
}

func newConnLimiter(ln net.Listener, max int) *connLimiter {
	return &connLimiter{connlimit.New(ln, max)}
}

// connState is the http.Server's ConnState hook.
func (l *connLimiter) connState(c net.Conn, s http.ConnState) { l.ConnState(c, s) }
