package benchkit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWritePlainApp(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "plain")
	if err := WritePlainApp(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "server.js"))
	if err != nil || !strings.Contains(string(b), "createServer") {
		t.Fatalf("server.js: %v %q", err, b)
	}
}
