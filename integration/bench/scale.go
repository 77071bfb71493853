package bench

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/integration/harness"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store/boltstore"
)

// ScaleOptions configure RunScale.
type ScaleOptions struct {
	// Bin is the postern binary.
	Bin string
	// Projects is the number of projects in the store.
	Projects int
	// Lookups is the number of socketmap lookups timed (hits; as many again for misses is not
	// done: a miss triggers a store reload by design).
	Lookups int
	// IdleFor is how long Postern's idle CPU use (periodic reloads of every project) is measured.
	IdleFor time.Duration
}

// ScaleResult is what Postern costs with many projects.
type ScaleResult struct {
	Projects int `json:"projects"`
	// StoreWriteSeconds is how long writing the projects with boltstore took (not Postern's cost).
	StoreWriteSeconds float64 `json:"store_write_seconds"`
	StoreBytes        int64   `json:"store_bytes"`
	// StartupSeconds: from exec of postern serve until /readyz answered 200 with every project.
	StartupSeconds float64 `json:"startup_seconds"`
	// RSSMB is VmRSS once ready and after the lookups; PeakRSSMB is VmHWM.
	RSSMB     float64 `json:"rss_mb"`
	PeakRSSMB float64 `json:"peak_rss_mb"`
	// SocketmapLookups were timed over one connection, as Postfix's socketmap client keeps it.
	SocketmapLookups   int     `json:"socketmap_lookups"`
	SocketmapMeanMicro float64 `json:"socketmap_mean_us"`
	SocketmapP99Micro  float64 `json:"socketmap_p99_us"`
	// MissLookups of unknown senders were timed over one connection, as fast as they come; a
	// miss triggers a reload of the store at most every 2s. MissReloadMillis is the mean wait of
	// a miss that triggers one (three, spaced out).
	MissLookups      int     `json:"socketmap_miss_lookups"`
	MissMeanMicro    float64 `json:"socketmap_miss_mean_us"`
	MissP99Micro     float64 `json:"socketmap_miss_p99_us"`
	MissReloadMillis float64 `json:"socketmap_miss_reload_ms"`
	// IdleCPUPercent is Postern's CPU use while idle: every reload_interval (10 s, the default) it
	// reads the store's stamp, and decodes the projects only when the stamp changed.
	IdleCPUPercent float64 `json:"idle_cpu_percent"`
	IdleSeconds    float64 `json:"idle_seconds"`
}

// scaleSender is the address of project i.
func scaleSender(i int) string { return fmt.Sprintf("noreply@p%05d.example", i) }

// scaleProjects returns n projects, each with its own sender, domain, upstream port and password.
func scaleProjects(n int) []project.Project {
	ps := make([]project.Project, n)
	for i := range ps {
		ps[i] = project.Project{
			Name:    fmt.Sprintf("p%05d", i),
			Enabled: true,
			Senders: []string{scaleSender(i), fmt.Sprintf("@p%05d.example", i)},
			Upstream: project.Upstream{
				Host: "127.0.0.1", Port: 10000 + i%50000, TLS: project.TLSStartTLS,
			},
			Auth: project.Auth{
				Type: project.AuthBasic, Username: scaleSender(i),
				Password: secret.New(fmt.Sprintf("password-%05d-%d", i, rand.Int64())),
			},
		}
	}
	return ps
}

// WriteProjects writes n projects into a new embedded store at path (key at keyFile) through the
// boltstore package, as `postern project add` would store them, in one PutProjects call: one
// transaction for all of them.
func WriteProjects(ctx context.Context, path, keyFile string, n int) error {
	st, err := boltstore.Create(ctx, boltstore.Options{Path: path, KeyFile: keyFile})
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := st.PutProjects(ctx, scaleProjects(n)); err != nil {
		return fmt.Errorf("writing %d projects: %w", n, err)
	}
	return nil
}

// RunScale writes opts.Projects projects, starts Postern on them and measures its start-up time,
// memory and socketmap round trip.
func RunScale(r harness.T, opts ScaleOptions) ScaleResult {
	r.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	res := ScaleResult{Projects: opts.Projects, SocketmapLookups: opts.Lookups}
	dir := harness.TempDir(r)
	storeDir := filepath.Join(dir, "store")
	// The store goes on tmpfs when there is one, so that StoreWriteSeconds measures the encoding
	// and encryption rather than the disk's fsync.
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		shm, err := os.MkdirTemp("/dev/shm", "postern-bench-")
		if err != nil {
			r.Fatalf("%v", err)
		}
		r.Cleanup(func() { os.RemoveAll(shm) })
		storeDir = shm
	}
	storePath, keyFile := filepath.Join(storeDir, "store.db"), filepath.Join(storeDir, "store.key")
	began := time.Now()
	if err := WriteProjects(ctx, storePath, keyFile, opts.Projects); err != nil {
		r.Fatalf("%v", err)
	}
	res.StoreWriteSeconds = time.Since(began).Seconds()
	if fi, err := os.Stat(storePath); err == nil {
		res.StoreBytes = fi.Size()
	}
	r.Logf("wrote %d projects (%d bytes) in %.1fs", opts.Projects, res.StoreBytes, res.StoreWriteSeconds)

	p, startup := startScalePostern(ctx, r, opts.Bin, filepath.Join(dir, "postern"),
		fmt.Sprintf("  file: {path: %s, key_file: %s}", storePath, keyFile), opts.Projects)
	res.StartupSeconds = startup.Seconds()

	lat, err := socketmapLatency(ctx, p.SocketmapSocket, opts.Lookups, func(int) (string, bool) {
		return scaleSender(rand.IntN(opts.Projects)), true
	})
	if err != nil {
		r.Fatalf("%v", err)
	}
	res.SocketmapMeanMicro, res.SocketmapP99Micro = lat.mean, lat.p99

	// Unknown senders: the first one after a quiet spell triggers a reload and waits for it.
	var waits []time.Duration
	for i := range 3 {
		time.Sleep(2100 * time.Millisecond)
		l, err := socketmapLatency(ctx, p.SocketmapSocket, 1, func(int) (string, bool) {
			return fmt.Sprintf("nobody%d@unknown.example", i), false
		})
		if err != nil {
			r.Fatalf("%v", err)
		}
		waits = append(waits, time.Duration(l.mean*float64(time.Microsecond)))
	}
	res.MissReloadMillis = float64(summarize(waits).mean) / 1000
	res.MissLookups = opts.Lookups / 10
	miss, err := socketmapLatency(ctx, p.SocketmapSocket, res.MissLookups, func(i int) (string, bool) {
		return fmt.Sprintf("nobody%d@unknown.example", i), false
	})
	if err != nil {
		r.Fatalf("%v", err)
	}
	res.MissMeanMicro, res.MissP99Micro = miss.mean, miss.p99

	pid := p.PID()
	cpu0, _ := procCPU(pid)
	t0 := time.Now()
	time.Sleep(opts.IdleFor)
	cpu1, _ := procCPU(pid)
	res.IdleSeconds = time.Since(t0).Seconds()
	res.IdleCPUPercent = 100 * (cpu1 - cpu0) / res.IdleSeconds

	rss, err := harness.ProcStatusKB(pid, "VmRSS")
	if err != nil {
		r.Fatalf("%v", err)
	}
	hwm, err := harness.ProcStatusKB(pid, "VmHWM")
	if err != nil {
		r.Fatalf("%v", err)
	}
	res.RSSMB, res.PeakRSSMB = float64(rss)/1024, float64(hwm)/1024
	return res
}

type latency struct{ mean, p99 float64 }

// socketmapLatency asks for n senders over one connection and times each answer. sender(i)
// returns the i-th sender and whether Postern must route it.
func socketmapLatency(ctx context.Context, sock string, n int, sender func(int) (string, bool)) (latency, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return latency{}, fmt.Errorf("connecting to the socketmap: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	br := bufio.NewReader(c)
	times := make([]time.Duration, 0, n)
	for i := range n {
		who, known := sender(i)
		req := "senders " + who
		t0 := time.Now()
		if _, err := fmt.Fprintf(c, "%d:%s,", len(req), req); err != nil {
			return latency{}, fmt.Errorf("asking the socketmap: %w", err)
		}
		reply, err := harness.ReadNetstring(br)
		if err != nil {
			return latency{}, fmt.Errorf("reading the socketmap's answer: %w", err)
		}
		times = append(times, time.Since(t0))
		if strings.HasPrefix(reply, "OK ") != known {
			return latency{}, fmt.Errorf("socketmap answered %q for %s", reply, who)
		}
	}
	return summarize(times), nil
}

func summarize(ts []time.Duration) latency {
	if len(ts) == 0 {
		return latency{}
	}
	var sum time.Duration
	for _, t := range ts {
		sum += t
	}
	sorted := append([]time.Duration(nil), ts...)
	sortDurations(sorted)
	p99 := sorted[min(len(sorted)-1, len(sorted)*99/100)]
	return latency{
		mean: float64(sum.Microseconds()) / float64(len(ts)),
		p99:  float64(p99.Nanoseconds()) / 1000,
	}
}

// procCPU returns the user+system CPU seconds of a process from /proc/PID/stat.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("process %d: unexpected stat %q", pid, s)
	}
	f := strings.Fields(s[i+1:])
	// After the command: state(0) ... utime is field 14 of the line, index 11 here.
	if len(f) < 13 {
		return 0, fmt.Errorf("process %d: short stat", pid)
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("process %d: bad stat", pid)
	}
	const clkTck = 100 // USER_HZ on Linux
	return (ut + st) / clkTck, nil
}

// startScalePostern starts Postern in dir on the store that storeYAML configures, with the
// production reload interval, and returns it once it is ready with n projects, with the time
// that took from its start.
func startScalePostern(ctx context.Context, r harness.T, bin, dir, storeYAML string, n int) (*harness.Postern, time.Duration) {
	r.Helper()
	p, err := harness.NewPostern(harness.PosternOptions{Bin: bin, Dir: dir, LogLevel: "info", Store: storeYAML})
	if err != nil {
		r.Fatalf("%v", err)
	}
	if err := productionReload(p); err != nil {
		r.Fatalf("%v", err)
	}
	r.Cleanup(func() {
		if err := p.Stop(); err != nil {
			r.Logf("stopping postern: %v", err)
		}
	})
	began := time.Now()
	if err := p.Start(ctx); err != nil {
		r.Fatalf("%v", err)
	}
	if err := waitProjects(ctx, p, n); err != nil {
		r.Fatalf("waiting for postern to be ready with %d projects: %v\n%s", n, err, p.Log())
	}
	return p, time.Since(began)
}
