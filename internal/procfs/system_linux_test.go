package procfs

import (
	"os"
	"testing"
	"time"
)

// TestSelf reads this process's own figures, as the process_* metrics do.
func TestSelf(t *testing.T) {
	p, err := Stat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if p.RSS < 1<<20 || p.VSize < p.RSS {
		t.Errorf("Stat(self) = %+v: implausible memory", p)
	}
	boot, err := BootTime()
	if err != nil {
		t.Fatal(err)
	}
	if started := p.Started(boot); time.Since(started) < 0 || time.Since(started) > time.Hour {
		t.Errorf("started %v (boot %v), the test began moments ago", started, boot)
	}

	n, err := OpenFiles(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if m, err := OpenFiles(os.Getpid()); err != nil || m != n+1 || n < 4 {
		t.Errorf("OpenFiles = %d, then %d, %v after opening one more", n, m, err)
	}
	if _, err := OpenFiles(1 << 29); !Vanished(err) {
		t.Errorf("OpenFiles(missing): err = %v", err)
	}
	if _, err := OpenFiles(0); err == nil {
		t.Error("OpenFiles(0): no error")
	}
}
