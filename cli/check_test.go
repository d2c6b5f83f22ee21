package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckWarnings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.toml")
	data := "[app]\ncommand = [\"node\", \"server.js\"]\n[proxy]\nlisten = \":80\"\nidle_timeout = \"30s\"\n"
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := Main([]string{"agent", "check", "--config", path}, Build{}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	want := "warning: " + path + ":5:17: proxy.idle_timeout: 30s is below the ALB's 60s idle timeout: the ALB may reuse a connection the agent is closing (502)\n"
	if errs := errb.String(); !strings.HasPrefix(errs, want) || !strings.HasSuffix(errs, path+": ok\n") {
		t.Errorf("stderr:\n%s\nwant\n%s...\n%s: ok", errs, want, path)
	}
	if !strings.Contains(out.String(), "idle_timeout = \"30s\"\n") {
		t.Errorf("effective config lacks idle_timeout:\n%s", out.String())
	}
}
