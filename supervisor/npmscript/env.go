package npmscript

import "strings"

// env is an environment with unique keys, in first-seen order; a later KEY=VALUE replaces
// an earlier one, as exec.Cmd does with duplicates.
type env struct {
	keys []string
	vals map[string]string
}

func newEnv(list []string) *env {
	e := &env{vals: make(map[string]string, len(list)+16)}
	for _, kv := range list {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue // not a variable: the kernel passes it, but no shell would see it
		}
		e.set(k, v)
	}
	return e
}

func (e *env) set(k, v string) {
	if _, ok := e.vals[k]; !ok {
		e.keys = append(e.keys, k)
	}
	e.vals[k] = v
}

func (e *env) lookup(k string) (string, bool) {
	v, ok := e.vals[k]
	return v, ok
}

func (e *env) get(k string) string { return e.vals[k] }

func (e *env) clone() *env {
	c := &env{keys: append([]string(nil), e.keys...), vals: make(map[string]string, len(e.vals)+4)}
	for k, v := range e.vals {
		c.vals[k] = v
	}
	return c
}

func (e *env) list() []string {
	out := make([]string, len(e.keys))
	for i, k := range e.keys {
		out[i] = k + "=" + e.vals[k]
	}
	return out
}
