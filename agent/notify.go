package agent

import (
	"os"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/rs/zerolog"
)

// Notifier tells systemd about the agent over the sd_notify protocol:
// readiness, a status line, watchdog keep-alives, stop and reload. Outside
// systemd (no NOTIFY_SOCKET) every method is a silent no-op, and a failed
// send is logged at debug level and otherwise ignored: systemd's view of
// the agent never decides whether the app runs.
//
// The agent leaves NOTIFY_SOCKET and WATCHDOG_* in its own environment; the
// supervisor strips them from the app's.
type Notifier struct {
	log      zerolog.Logger
	enabled  bool
	watchdog time.Duration // WATCHDOG_USEC, 0 when off
}

// NewNotifier reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID once.
// The watchdog counts as on only when WATCHDOG_USEC is valid and
// WATCHDOG_PID, if set, is this process.
func NewNotifier(log zerolog.Logger) *Notifier {
	n := &Notifier{
		log:     log.With().Str("component", "sd_notify").Logger(),
		enabled: os.Getenv("NOTIFY_SOCKET") != "",
	}
	if !n.enabled {
		return n
	}
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		n.log.Warn().Err(err).Msg("watchdog settings ignored")
	}
	n.watchdog = d
	return n
}

// Enabled reports whether NOTIFY_SOCKET was set, that is whether systemd
// listens.
func (n *Notifier) Enabled() bool { return n.enabled }

// Ready sends READY=1.
func (n *Notifier) Ready() { n.send(daemon.SdNotifyReady) }

// Status sends STATUS=line; line breaks become spaces so the status stays
// one line and cannot carry other assignments.
func (n *Notifier) Status(line string) {
	n.send("STATUS=" + statusLineBreaks.Replace(line))
}

var statusLineBreaks = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ")

// Watchdog sends WATCHDOG=1.
func (n *Notifier) Watchdog() { n.send(daemon.SdNotifyWatchdog) }

// WatchdogInterval returns how often to call Watchdog: half of
// WATCHDOG_USEC, or 0 when the watchdog is off.
func (n *Notifier) WatchdogInterval() time.Duration { return n.watchdog / 2 }

// Stopping sends STOPPING=1.
func (n *Notifier) Stopping() { n.send(daemon.SdNotifyStopping) }

// Reloading sends RELOADING=1 with MONOTONIC_USEC, the CLOCK_MONOTONIC
// time that systemd 253 and later require with it (older ones ignore it).
// Ready ends the reload.
func (n *Notifier) Reloading() {
	msg := daemon.SdNotifyReloading
	if mono := daemon.SdNotifyMonotonicUsec(); mono != "" {
		msg += "\n" + strings.TrimSuffix(mono, "\n")
	}
	n.send(msg)
}

func (n *Notifier) send(state string) {
	if !n.enabled {
		return
	}
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Debug().Err(err).Str("message", state).Msg("sd_notify send failed")
	}
}
