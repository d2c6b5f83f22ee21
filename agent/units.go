package agent

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The value types of the config. Each implements toml.Unmarshaler, which
// sees the TOML value with its type (so a wrong type is named as such) and
// whose errors the decoder reports with the value's position, and
// encoding.TextUnmarshaler and TextMarshaler for everything else.

// Duration is a non-negative duration written as a Go duration string:
// "1s", "10m", "1h30m", "0s".
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats d in the shortest exact form: "1s", "60s", "10m", "1500ms".
func (d Duration) String() string {
	td := time.Duration(d)
	switch {
	case td == 0:
		return "0s"
	case td%time.Hour == 0 && td/time.Hour > 1:
		return strconv.FormatInt(int64(td/time.Hour), 10) + "h"
	case td%time.Minute == 0 && td/time.Minute > 1:
		return strconv.FormatInt(int64(td/time.Minute), 10) + "m"
	case td%time.Second == 0:
		return strconv.FormatInt(int64(td/time.Second), 10) + "s"
	case td%time.Millisecond == 0:
		return strconv.FormatInt(int64(td/time.Millisecond), 10) + "ms"
	}
	return td.String()
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := parseDuration(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// UnmarshalTOML implements toml.Unmarshaler: a string only.
func (d *Duration) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return errors.New(`expected a duration string such as "10s", got ` + describeValue(v))
	}
	return d.UnmarshalText([]byte(s))
}

func parseDuration(s string) (Duration, error) {
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: %w", s, err)
	}
	if v < 0 {
		return 0, fmt.Errorf("invalid duration %q: must not be negative", s)
	}
	return Duration(v), nil
}

// ByteSize is a number of bytes written as an integer with an optional
// unit: "0", "1048576", "512K", "700MB", "1GiB". K, KB and KiB (and M, G, T
// likewise) are all binary multiples of 1024, as in PM2's "700M".
type ByteSize uint64

var sizeUnits = []struct {
	names []string
	mult  uint64
}{
	{[]string{"", "b"}, 1},
	{[]string{"k", "kb", "kib"}, 1 << 10},
	{[]string{"m", "mb", "mib"}, 1 << 20},
	{[]string{"g", "gb", "gib"}, 1 << 30},
	{[]string{"t", "tb", "tib"}, 1 << 40},
}

// String formats b with the largest binary unit that divides it exactly:
// "0", "1000", "512KiB", "700MiB", "1GiB".
func (b ByteSize) String() string {
	if b == 0 {
		return "0"
	}
	for i := len(sizeUnits) - 1; i > 0; i-- {
		u := sizeUnits[i]
		if uint64(b)%u.mult == 0 {
			return strconv.FormatUint(uint64(b)/u.mult, 10) + strings.ToUpper(u.names[2][:1]) + "iB"
		}
	}
	return strconv.FormatUint(uint64(b), 10)
}

// MarshalText implements encoding.TextMarshaler.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (b *ByteSize) UnmarshalText(text []byte) error {
	v, err := parseByteSize(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// UnmarshalTOML implements toml.Unmarshaler: a string or an integer.
func (b *ByteSize) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		return b.UnmarshalText([]byte(v))
	case int64:
		return b.UnmarshalText([]byte(strconv.FormatInt(v, 10)))
	}
	return errors.New(`expected a size such as "700MB", got ` + describeValue(v))
}

func parseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		if strings.HasPrefix(t, "-") {
			return 0, fmt.Errorf("invalid size %q: must not be negative", s)
		}
		return 0, fmt.Errorf("invalid size %q: want a whole number with an optional unit K, M or G, e.g. \"700MB\"", s)
	}
	n, err := strconv.ParseUint(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	unit := strings.ToLower(strings.TrimSpace(t[i:]))
	for _, u := range sizeUnits {
		for _, name := range u.names {
			if unit != name {
				continue
			}
			if n > math.MaxUint64/u.mult {
				return 0, fmt.Errorf("invalid size %q: too large", s)
			}
			return ByteSize(n * u.mult), nil
		}
	}
	return 0, fmt.Errorf("invalid size %q: unknown unit %q (use K, M or G; all are multiples of 1024)", s, strings.TrimSpace(t[i:]))
}

// Signal is a signal to stop the app with, written "SIGTERM" or "TERM" in
// any case. Only HUP, INT, QUIT, KILL, USR1, USR2 and TERM are accepted; an
// unknown name is an error, never a silent SIGTERM.
type Signal syscall.Signal

var signalNames = []struct {
	name string
	sig  syscall.Signal
}{
	{"HUP", syscall.SIGHUP},
	{"INT", syscall.SIGINT},
	{"QUIT", syscall.SIGQUIT},
	{"KILL", syscall.SIGKILL},
	{"USR1", syscall.SIGUSR1},
	{"USR2", syscall.SIGUSR2},
	{"TERM", syscall.SIGTERM},
}

// Sys returns s as a syscall.Signal.
func (s Signal) Sys() syscall.Signal { return syscall.Signal(s) }

// String returns the signal's name, e.g. "SIGTERM".
func (s Signal) String() string {
	for _, n := range signalNames {
		if n.sig == syscall.Signal(s) {
			return "SIG" + n.name
		}
	}
	return "signal " + strconv.Itoa(int(s))
}

// MarshalText implements encoding.TextMarshaler.
func (s Signal) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Signal) UnmarshalText(b []byte) error {
	v, err := parseSignal(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// UnmarshalTOML implements toml.Unmarshaler: a string only.
func (s *Signal) UnmarshalTOML(v any) error {
	str, ok := v.(string)
	if !ok {
		return errors.New(`expected a signal name such as "SIGTERM", got ` + describeValue(v))
	}
	return s.UnmarshalText([]byte(str))
}

func parseSignal(s string) (Signal, error) {
	name := strings.ToUpper(strings.TrimSpace(s))
	name = strings.TrimPrefix(name, "SIG")
	for _, n := range signalNames {
		if n.name == name {
			return Signal(n.sig), nil
		}
	}
	return 0, fmt.Errorf("unknown signal %q (use one of SIGHUP, SIGINT, SIGQUIT, SIGKILL, SIGUSR1, SIGUSR2, SIGTERM)", s)
}

// HeapSetting is node.max_old_space_size: "auto" (Auto), a number of MB
// (a TOML integer or a string of digits), or 0 to leave NODE_OPTIONS alone.
type HeapSetting struct {
	Auto bool
	MB   int // when !Auto; 0 = leave NODE_OPTIONS alone
}

// String returns "auto" or the number of MB.
func (h HeapSetting) String() string {
	if h.Auto {
		return "auto"
	}
	return strconv.Itoa(h.MB)
}

// MarshalText implements encoding.TextMarshaler.
func (h HeapSetting) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (h *HeapSetting) UnmarshalText(b []byte) error {
	v, err := parseHeap(string(b))
	if err != nil {
		return err
	}
	*h = v
	return nil
}

// UnmarshalTOML implements toml.Unmarshaler: a string or an integer.
func (h *HeapSetting) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		return h.UnmarshalText([]byte(v))
	case int64:
		return h.UnmarshalText([]byte(strconv.FormatInt(v, 10)))
	}
	return errors.New(`expected "auto" or a number of MB, got ` + describeValue(v))
}

func parseHeap(s string) (HeapSetting, error) {
	t := strings.TrimSpace(s)
	if strings.EqualFold(t, "auto") {
		return HeapSetting{Auto: true}, nil
	}
	if strings.HasPrefix(t, "-") {
		if _, err := strconv.Atoi(t); err == nil {
			return HeapSetting{}, fmt.Errorf("%s is negative (0 = leave NODE_OPTIONS alone)", t)
		}
	}
	digits := t != ""
	for _, r := range t {
		if r < '0' || r > '9' {
			digits = false
		}
	}
	if !digits {
		return HeapSetting{}, fmt.Errorf("invalid value %q: want \"auto\", a number of MB, or 0", s)
	}
	n, err := strconv.ParseInt(t, 10, 32)
	if err != nil {
		return HeapSetting{}, fmt.Errorf("invalid value %q: too large", s)
	}
	return HeapSetting{MB: int(n)}, nil
}

// MaxInstances is the most app processes app.instances may ask for.
const MaxInstances = 64

// Instances is app.instances: a number of app processes from 1 to
// MaxInstances (a TOML integer), or "auto" (Auto): one per CPU the agent
// may use.
type Instances struct {
	Auto bool
	N    int // when !Auto
}

// Count returns the number of processes, "auto" resolved on this machine.
func (i Instances) Count() int {
	if i.Auto {
		return min(max(runtime.NumCPU(), 1), MaxInstances)
	}
	return i.N
}

// String returns "auto" or the number.
func (i Instances) String() string {
	if i.Auto {
		return "auto"
	}
	return strconv.Itoa(i.N)
}

// tomlText returns i as TOML: "auto" quoted, a number bare.
func (i Instances) tomlText() string {
	if i.Auto {
		return `"auto"`
	}
	return strconv.Itoa(i.N)
}

// MarshalText implements encoding.TextMarshaler.
func (i Instances) MarshalText() ([]byte, error) { return []byte(i.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (i *Instances) UnmarshalText(b []byte) error {
	t := strings.TrimSpace(string(b))
	if strings.EqualFold(t, "auto") {
		*i = Instances{Auto: true}
		return nil
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil {
		return fmt.Errorf(`invalid value %q: want a number from 1 to %d or "auto"`, t, MaxInstances)
	}
	return i.set(n)
}

// UnmarshalTOML implements toml.Unmarshaler: an integer or "auto".
func (i *Instances) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case int64:
		return i.set(v)
	case string:
		if strings.EqualFold(strings.TrimSpace(v), "auto") {
			*i = Instances{Auto: true}
			return nil
		}
	}
	return fmt.Errorf(`expected a number from 1 to %d or "auto", got %s`, MaxInstances, describeValue(v))
}

func (i *Instances) set(n int64) error {
	switch {
	case n < 1:
		return fmt.Errorf("%d is less than 1", n)
	case n > MaxInstances:
		return fmt.Errorf("%d is more than %d", n, MaxInstances)
	}
	*i = Instances{N: int(n)}
	return nil
}
