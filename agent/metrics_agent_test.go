package agent

import (
	"fmt"
	"net/http"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// scrape reads /metrics with the Prometheus text parser.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value returns the value of the series of fam whose labels include want.
func value(fams map[string]*dto.MetricFamily, fam string, want map[string]string) (float64, bool) {
	f := fams[fam]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
	}
	return 0, false
}

func TestMetricsCountRealCrashes(t *testing.T) {
	node := needNode(t)
	port := freePort(t)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r := startAgent(t, fmt.Sprintf(`
[app]
command = [%q, %q]
env = { PORT = "%d" }
[restart]
delay = "0s"
[memory]
watch_oom = false
[health]
listen = "127.0.0.1:0"
[control]
socket = "SOCKET"
[probe]
tcp = "127.0.0.1:%d"
[metrics]
listen = %q
`, node, appPath(t, "server.js"), port, port, metricsAddr))
	r.waitState("running")
	for i := range 2 {
		http.Get(fmt.Sprintf("http://127.0.0.1:%d/crash", port))
		r.waitStatus(fmt.Sprintf("restart %d", i+1), func(s Status) bool { return s.Restarts == i+1 && s.State == "running" })
	}
	r.waitFor("an RSS sample of the new node", func() bool { return r.a.Status().RSSBytes > 10<<20 })
	fams := scrape(t, "http://"+metricsAddr+"/metrics")
	for _, c := range []struct {
		fam    string
		labels map[string]string
		want   float64
	}{
		{"agent_app_exits_total", map[string]string{"reason": "crashed"}, 2},
		{"agent_app_exits_total", map[string]string{"reason": "oom-kill"}, 0},
		{"agent_app_restarts_total", nil, 2},
		{"agent_app_up", nil, 1},
		{"agent_app_ready", nil, 1},
	} {
		if got, ok := value(fams, c.fam, c.labels); !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.fam, c.labels, got, ok, c.want)
		}
	}
	if v, ok := value(fams, "agent_app_rss_bytes", nil); !ok || v < 10<<20 {
		t.Errorf("agent_app_rss_bytes = %v", v)
	}
	// Never on the health port.
	resp, err := http.Get("http://" + r.a.health.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("/metrics on the health port: %d, want 404", resp.StatusCode)
	}
}
