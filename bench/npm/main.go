// Command npm measures what running `npm start` costs: the tree RSS of the real Next.js app
// (the internal/testapp fixture) after 20 requests, started by `npm start` (npm and sh stay
// resident) and by the npmscript plan (next-server exec'd directly). Runs alternate, 5 of
// each by default; the medians and each tree's processes are printed.
//
//	go run ./bench/npm [-runs 5] [-requests 20]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"agent/internal/testapp"
	"agent/internal/testkit"
	"agent/supervisor/npmscript"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "bench/npm:", err)
		os.Exit(1)
	}
}

type result struct {
	rss   int64 // bytes, whole tree
	procs []string
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench/npm", flag.ContinueOnError)
	runs := fs.Int("runs", 5, "runs of each way")
	requests := fs.Int("requests", 20, "requests before measuring")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := testapp.NextAppDir(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("next.js %s app in %s, %d runs of each, %d requests each\n", testapp.NextVersion, dir, *runs, *requests)
	ways := []struct {
		name  string
		start func(env []string) (*exec.Cmd, error)
	}{
		{"npm start", func(env []string) (*exec.Cmd, error) {
			cmd := exec.Command("npm", "start")
			cmd.Dir, cmd.Env = dir, env
			return cmd, nil
		}},
		{"plan (direct)", func(env []string) (*exec.Cmd, error) {
			plan, err := npmscript.Resolve(dir, "start", nil, env, "")
			if err != nil {
				return nil, err
			}
			if plan.Pre != nil || !plan.Main.Direct {
				return nil, fmt.Errorf("plan is not one direct step: %s", plan)
			}
			cmd := exec.Command(plan.Main.Path)
			cmd.Args, cmd.Env, cmd.Dir = plan.Main.Argv, plan.Main.Env, plan.Dir
			return cmd, nil
		}},
	}
	res := make([][]result, len(ways))
	for i := 0; i < *runs; i++ {
		for w, way := range ways {
			r, err := once(ctx, way.start, *requests)
			if err != nil {
				return fmt.Errorf("%s: %w", way.name, err)
			}
			fmt.Printf("run %d %-14s tree RSS %6.1f MB  %s\n", i+1, way.name, mb(r.rss), strings.Join(r.procs, " > "))
			res[w] = append(res[w], r)
		}
	}
	fmt.Println()
	fmt.Println("| started by | tree RSS, median | processes |")
	fmt.Println("|---|---|---|")
	var med []int64
	for w, way := range ways {
		m := median(res[w])
		med = append(med, m)
		fmt.Printf("| %s | %.1f MB | %s |\n", way.name, mb(m), strings.Join(res[w][0].procs, " > "))
	}
	fmt.Printf("\nsaved by the plan: %.1f MB (median of npm start minus median of the plan)\n", mb(med[0]-med[1]))
	return nil
}

// once starts the app, waits until it serves, sends n requests, measures the tree and stops it.
func once(ctx context.Context, start func([]string) (*exec.Cmd, error), n int) (result, error) {
	ports, release, err := testkit.ReservePorts(1)
	if err != nil {
		return result{}, err
	}
	defer release()
	port := ports[0]
	env := append(os.Environ(), "PORT="+strconv.Itoa(port), "NEXT_TELEMETRY_DISABLED=1", "NODE_ENV=production")
	cmd, err := start(env)
	if err != nil {
		return result{}, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	pid := cmd.Process.Pid
	defer func() {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}()
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	deadline := time.Now().Add(2 * time.Minute)
	for served := 0; served < n; {
		if ctx.Err() != nil {
			return result{}, ctx.Err()
		}
		if time.Now().After(deadline) {
			return result{}, errors.New("the app did not serve 20 requests within 2 minutes")
		}
		resp, err := http.Get(url)
		if err != nil {
			time.Sleep(50 * time.Millisecond) // not listening yet
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			served++
		}
	}
	return tree(pid)
}

// tree sums VmRSS over pid and its descendants (from /proc), listing their names root first.
func tree(root int) (result, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return result{}, err
	}
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		rest := s[strings.LastIndexByte(s, ')')+2:]
		f := strings.Fields(rest)
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
	}
	var r result
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				r.rss += kb * 1024
			}
		}
		r.procs = append(r.procs, strings.TrimSpace(string(comm)))
		sort.Ints(children[pid])
		queue = append(queue, children[pid]...)
	}
	return r, nil
}

func median(rs []result) int64 {
	v := make([]int64, len(rs))
	for i, r := range rs {
		v[i] = r.rss
	}
	sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
	return v[len(v)/2]
}

func mb(b int64) float64 { return float64(b) / 1e6 }
