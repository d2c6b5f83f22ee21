package cloudwatch

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/prometheus/common/expfmt"
	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"

	"agent/internal/logsink"
	"agent/internal/testkit"
	"agent/metrics"
)

// The values the README tells users to put in agent.toml.
const (
	logFile       = "/var/log/agent/web.log"
	metricsListen = "127.0.0.1:9100"
)

// cwConfig is the part of the CloudWatch agent's JSON config these files
// use; unknown fields are an error, so a misspelt key fails the test.
type cwConfig struct {
	Agent struct {
		RunAsUser string `json:"run_as_user"`
	} `json:"agent"`
	Logs struct {
		LogsCollected struct {
			Files struct {
				CollectList []struct {
					FilePath        string `json:"file_path"`
					LogGroupName    string `json:"log_group_name"`
					LogStreamName   string `json:"log_stream_name"`
					TimestampFormat string `json:"timestamp_format"`
					Timezone        string `json:"timezone"`
					RetentionInDays int    `json:"retention_in_days"`
				} `json:"collect_list"`
			} `json:"files"`
		} `json:"logs_collected"`
		MetricsCollected struct {
			Prometheus struct {
				LogGroupName         string `json:"log_group_name"`
				PrometheusConfigPath string `json:"prometheus_config_path"`
				EMFProcessor         struct {
					MetricNamespace        string            `json:"metric_namespace"`
					MetricDeclarationDedup bool              `json:"metric_declaration_dedup"`
					MetricUnit             map[string]string `json:"metric_unit"`
					MetricDeclaration      []struct {
						SourceLabels    []string   `json:"source_labels"`
						LabelMatcher    string     `json:"label_matcher"`
						Dimensions      [][]string `json:"dimensions"`
						MetricSelectors []string   `json:"metric_selectors"`
					} `json:"metric_declaration"`
				} `json:"emf_processor"`
			} `json:"prometheus"`
		} `json:"metrics_collected"`
	} `json:"logs"`
}

// promConfig is the part of a Prometheus scrape config prometheus.yaml uses.
type promConfig struct {
	Global struct {
		ScrapeInterval string `yaml:"scrape_interval"`
		ScrapeTimeout  string `yaml:"scrape_timeout"`
	} `yaml:"global"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		MetricsPath   string `yaml:"metrics_path"`
		Scheme        string `yaml:"scheme"`
		SampleLimit   int    `yaml:"sample_limit"`
		StaticConfigs []struct {
			Targets []string          `yaml:"targets"`
			Labels  map[string]string `yaml:"labels"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

func loadConfigs(t *testing.T) (cwConfig, promConfig) {
	t.Helper()
	var cw cwConfig
	b, err := os.ReadFile("amazon-cloudwatch-agent.json")
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cw); err != nil {
		t.Fatalf("amazon-cloudwatch-agent.json: %v", err)
	}
	var pc promConfig
	b, err = os.ReadFile("prometheus.yaml")
	if err != nil {
		t.Fatal(err)
	}
	yd := yaml.NewDecoder(bytes.NewReader(b))
	yd.KnownFields(true)
	if err := yd.Decode(&pc); err != nil {
		t.Fatalf("prometheus.yaml: %v", err)
	}
	return cw, pc
}

// exampleDefaults reads agent.toml.example, where every key is written,
// commented out, with its default: section -> key -> value.
func exampleDefaults(t *testing.T) map[string]map[string]any {
	t.Helper()
	f, err := os.Open("../../agent.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	section := regexp.MustCompile(`^#?\s*\[([a-z_.]+)\]\s*$`)
	keyval := regexp.MustCompile(`^#?\s*([a-z_]+)\s*=\s*(.+)$`)
	out := map[string]map[string]any{"": {}}
	cur := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if m := section.FindStringSubmatch(line); m != nil {
			cur = m[1]
			if out[cur] == nil {
				out[cur] = map[string]any{}
			}
			continue
		}
		m := keyval.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		var v map[string]any
		if _, err := toml.Decode("v = "+m[2], &v); err != nil {
			continue // prose that looks like an assignment
		}
		if _, seen := out[cur][m[1]]; !seen {
			out[cur][m[1]] = v["v"]
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func port(t *testing.T, hostport string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	return p
}

func TestConfigsAgreeWithAgent(t *testing.T) {
	cw, pc := loadConfigs(t)
	def := exampleDefaults(t)
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}

	// The log file.
	files := cw.Logs.LogsCollected.Files.CollectList
	if len(files) != 1 {
		t.Fatalf("%d files collected, want 1", len(files))
	}
	if files[0].FilePath != logFile {
		t.Errorf("file_path %q, want %q", files[0].FilePath, logFile)
	}
	if v, _ := def["log"]["file"].(string); v != "" && v != files[0].FilePath {
		t.Errorf("agent.toml.example log.file %q, CloudWatch tails %q", v, files[0].FilePath)
	}
	if v, ok := def["log"]["format"]; ok && v != "json" {
		t.Errorf("log.format default %v: the CloudWatch config expects json lines", v)
	}
	if files[0].Timezone != "UTC" {
		t.Errorf("timezone %q, want UTC: the agent writes UTC times", files[0].Timezone)
	}
	for _, want := range []string{`file = "` + logFile + `"`, `listen = "` + metricsListen + `"`} {
		if !bytes.Contains(readme, []byte(want)) {
			t.Errorf("README.md does not show %s", want)
		}
	}

	// The scrape: the metrics address, never the health or traffic port.
	if n := len(pc.ScrapeConfigs); n != 1 {
		t.Fatalf("%d scrape configs, want 1", n)
	}
	job := pc.ScrapeConfigs[0]
	if len(job.StaticConfigs) != 1 || len(job.StaticConfigs[0].Targets) != 1 {
		t.Fatalf("want one static target, got %+v", job.StaticConfigs)
	}
	target := job.StaticConfigs[0].Targets[0]
	if target != metricsListen {
		t.Errorf("scrape target %q, want %q", target, metricsListen)
	}
	if v, _ := def["metrics"]["listen"].(string); v != "" && v != target {
		t.Errorf("agent.toml.example metrics.listen %q, CloudWatch scrapes %q", v, target)
	}
	if host, _, _ := net.SplitHostPort(target); !net.ParseIP(host).IsLoopback() {
		t.Errorf("scrape target %q is not loopback", target)
	}
	for _, k := range []struct{ section, key string }{{"health", "listen"}, {"proxy", "listen"}, {"proxy", "upstream"}, {"proxy", "spare_upstream"}} {
		v, _ := def[k.section][k.key].(string)
		if v == "" {
			continue
		}
		if port(t, v) == port(t, target) {
			t.Errorf("scrape target %q shares its port with %s.%s %q", target, k.section, k.key, v)
		}
	}
	if _, ok := def["health"]["listen"]; !ok {
		t.Error("agent.toml.example has no health.listen default")
	}
	if p := cw.Logs.MetricsCollected.Prometheus.PrometheusConfigPath; path.Base(p) != "prometheus.yaml" {
		t.Errorf("prometheus_config_path %q does not name prometheus.yaml", p)
	}
	if job.JobName == "" {
		t.Fatal("no job_name")
	}
	for _, d := range cw.Logs.MetricsCollected.Prometheus.EMFProcessor.MetricDeclaration {
		if !regexp.MustCompile(d.LabelMatcher).MatchString(job.JobName) {
			t.Errorf("metric_declaration label_matcher %q does not match job %q", d.LabelMatcher, job.JobName)
		}
	}
	for _, d := range []string{pc.Global.ScrapeInterval, pc.Global.ScrapeTimeout} {
		if _, err := time.ParseDuration(d); err != nil {
			t.Errorf("global: %v", err)
		}
	}
}

// TestMetricSelectorsMatchServedSeries scrapes the real handler at the
// configured path and checks every selector names a series the agent
// serves, of a type the CloudWatch agent keeps (it drops histograms).
func TestMetricSelectorsMatchServedSeries(t *testing.T) {
	cw, pc := loadConfigs(t)
	m := metrics.New(func() metrics.Snapshot {
		return metrics.Snapshot{State: "running", Up: true, Proxy: &metrics.ProxySnapshot{}}
	})
	m.ObserveRequest(200, time.Millisecond)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + pc.ScrapeConfigs[0].MetricsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", pc.ScrapeConfigs[0].MetricsPath, resp.Status)
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	emf := cw.Logs.MetricsCollected.Prometheus.EMFProcessor
	for _, d := range emf.MetricDeclaration {
		for _, sel := range d.MetricSelectors {
			re := regexp.MustCompile(sel)
			found := false
			for name, f := range fams {
				if !re.MatchString(name) {
					continue
				}
				found = true
				if f.GetType().String() == "HISTOGRAM" {
					t.Errorf("selector %q picks histogram %s, which CloudWatch drops", sel, name)
				}
				// Every dimension but job must be a label of the series.
				for _, dims := range d.Dimensions {
					for _, dim := range dims {
						if dim == "job" {
							continue
						}
						for _, s := range f.Metric {
							has := false
							for _, l := range s.Label {
								has = has || l.GetName() == dim
							}
							if !has {
								t.Errorf("%s has no label %q used as a dimension", name, dim)
							}
						}
					}
				}
			}
			if !found {
				t.Errorf("selector %q matches no series the agent serves", sel)
			}
		}
	}
	for name := range emf.MetricUnit {
		if _, ok := fams[name]; !ok {
			t.Errorf("metric_unit names %s, which the agent does not serve", name)
		}
	}
}

// cwTimestamp finds and parses a timestamp in line as the CloudWatch agent
// does with timestamp_format: each strftime directive becomes a regexp and a
// Go layout; the first match in the line is parsed in loc. %f (1 to 9
// digits) is cut to milliseconds, as the CloudWatch agent does.
func cwTimestamp(format, line string, loc *time.Location) (time.Time, error) {
	directives := map[byte]struct{ re, layout string }{
		'Y': {`\d{4}`, "2006"}, 'm': {`\d{2}`, "01"}, 'd': {`\d{2}`, "02"},
		'H': {`\d{2}`, "15"}, 'M': {`\d{2}`, "04"}, 'S': {`\d{2}`, "05"},
		'f': {`(\d{1,9})`, "000"},
	}
	var re, layout strings.Builder
	for i := 0; i < len(format); i++ {
		if format[i] != '%' {
			re.WriteString(regexp.QuoteMeta(format[i : i+1]))
			layout.WriteByte(format[i])
			continue
		}
		i++
		if i == len(format) {
			return time.Time{}, fmt.Errorf("format %q ends in %%", format)
		}
		d, ok := directives[format[i]]
		if !ok {
			return time.Time{}, fmt.Errorf("format %q: %%%c not handled here", format, format[i])
		}
		re.WriteString(d.re)
		layout.WriteString(d.layout)
	}
	m := regexp.MustCompile(re.String()).FindStringSubmatchIndex(line)
	if m == nil {
		return time.Time{}, fmt.Errorf("no timestamp matching %q in %q", format, line)
	}
	ts := line[m[0]:m[1]]
	if len(m) > 3 && m[2] >= 0 {
		frac := (line[m[2]:m[3]] + "000")[:3]
		ts = line[m[0]:m[2]] + frac + line[m[3]:m[1]]
	}
	return time.ParseInLocation(layout.String(), ts, loc)
}

func TestTimestampFormatParsesAgentLines(t *testing.T) {
	cw, _ := loadConfigs(t)
	fc := cw.Logs.LogsCollected.Files.CollectList[0]

	// The agent's log settings: RFC3339Nano in "time", in UTC.
	zerolog.TimeFieldFormat = time.RFC3339Nano
	at := time.Date(2026, 11, 22, 10, 0, 5, 123456789, time.UTC)
	zerolog.TimestampFunc = func() time.Time { return at }
	t.Cleanup(func() { zerolog.TimestampFunc = time.Now })

	var buf bytes.Buffer
	log := zerolog.New(&buf).With().Timestamp().Logger()
	log.Info().Str("app", "web").Str("stream", "stdout").Int("pid", 1234).
		Msg("GET /items at 2025-01-01T00:00:00.5Z 200") // a timestamp in the message must not win
	at = time.Date(2026, 11, 22, 10, 0, 6, 5e6, time.UTC) // fewer digits: RFC3339Nano trims zeros
	log.Warn().Msg("second")

	// The sink's "dropped N log lines" notice goes through the same parser.
	at = time.Date(2026, 11, 22, 10, 0, 7, 9e8, time.UTC)
	fw := &failOnce{w: &buf}
	s := logsink.New(fw, 64<<10)
	s.Write([]byte(`{"level":"info","message":"lost"}` + "\n"))
	testkit.Eventually(t, 10*time.Second, "the sink's first (failing) write", func() bool { return fw.failed() != 0 })
	s.Write([]byte(`{"level":"info","message":"kept"}` + "\n"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	want := []time.Time{
		time.Date(2026, 11, 22, 10, 0, 5, 123e6, time.UTC),
		time.Date(2026, 11, 22, 10, 0, 6, 5e6, time.UTC),
		time.Date(2026, 11, 22, 10, 0, 7, 9e8, time.UTC),
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 4 || !strings.Contains(lines[2], "dropped 1 log lines") {
		t.Fatalf("lines:\n%s", buf.String())
	}
	for i, w := range want {
		got, err := cwTimestamp(fc.TimestampFormat, lines[i], time.UTC)
		if err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		if !got.Equal(w) {
			t.Errorf("line %d: CloudWatch would read %v, want %v\n%s", i+1, got, w, lines[i])
		}
	}
}

// failOnce fails its first write and passes the rest to w.
type failOnce struct {
	mu   sync.Mutex
	w    *bytes.Buffer
	n    int
	done bool
}

func (f *failOnce) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.done {
		f.done = true
		f.n++
		return 0, errors.New("disk full")
	}
	return f.w.Write(p)
}

func (f *failOnce) failed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}
