package benchkit

import "embed"

// The benchmarks' plain Node app (apps/plain/server.js): a hello world on
// PORT, GET /slow answered after 20 ms.
//
//go:embed apps
var apps embed.FS

// WritePlainApp writes the plain app's server.js into dir.
func WritePlainApp(dir string) error { return WriteTree(apps, "apps/plain", dir) }
