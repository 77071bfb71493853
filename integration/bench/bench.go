// Package bench measures Postern against Postfix relaying directly, in one run, on one machine,
// with real Postfix: what `make bench` runs (integration/scripts/bench.sh, which first runs the
// Go benchmarks of the hot path).
//
// The run:
//
//  1. Start a fast Go sink twice on loopback (package sink): plain, and with STARTTLS (a
//     harness CA) and AUTH PLAIN. It acknowledges every read at once (no delayed ACK). Measure the
//     sink alone with a Go load client, far above what any path reaches, so that it is never the
//     bottleneck.
//  2. Start postern serve (embedded file store, reload_interval at its default, debug.pprof on)
//     with one project whose upstream is the authenticating sink, and the front Postfix with
//     contrib/postfix appended verbatim and four ways out for four senders: A through Postern;
//     B through Postfix's own SMTP client with sender-dependent relayhost and SASL
//     authentication over TLS, as an operator without Postern relays a client's mail (TLS
//     session cache on, as in Debian's main.cf); B-full, the same without the TLS session cache
//     (Postfix's default); and Postfix's plain relay. Everything else in the front's
//     configuration is shared.
//  3. For each message size, round and concurrency step, submit with Postfix's smtp-source
//     (sessions = destination concurrency of every path) and time from the first submission to
//     the last arrival at the sink, each path taking its turn first between rounds. The summary
//     takes the median over the rounds, and of each round's ratios.
//  4. Measure Postern's added latency per message (added.go): path A at concurrency 1, its
//     delivery log against the sink's own time for each message. Count Postern's store reads (postern_store_project_reads_total) over those cells against
//     the messages it delivered. Record Postern's CPU profile while path A carries load.
//  5. Add an OAuth project: a real OAuth 2.0 server (oidc-provider) issues access tokens that
//     Postern refreshes every few seconds; the sink validates each new token at the server's
//     introspection endpoint. Measure path A with XOAUTH2 and count refreshes and deliveries that
//     waited for one.
//  6. Write 10,000 projects into an embedded store with package boltstore, start Postern on it and
//     measure start-up until /readyz, resident memory and the socketmap round trip. With Vault
//     (Options.Vault), write them into Vault too (vaultstore.PutProjects), start Postern on it
//     through a counting proxy, and measure start-up, memory and one full scan.
//  7. Between steps 5 and 6, the distant cells (distant.go): a second authenticating sink that allows 3 connections per
//     mailbox (421 4.3.2 beyond) behind a LatencyProxy at each round-trip time (default 0, 10,
//     30, 100 ms), with 1, 100 and 1,000 projects sending at once, path A and path B, Postfix at
//     its default process limit: messages per second, Postfix's queue delay (delays= in its log),
//     connections per message, 421s.
//  8. With Options.LargeProjects (e.g. 100,000), step 6 again in the file store: RSS,
//     start-up to ready and the socketmap round trip.
//  9. Summarise: a table on stdout, results.json (each summary row with rtt_ms and projects) and
//     a PNG chart of throughput against concurrency, and against projects per round-trip time.
package bench

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/postern/postern/integration/harness"
)

// Options configure Run. Zero values take the defaults noted.
type Options struct {
	// Bin is the postern binary (required).
	Bin string
	// Out is the directory for results.json and chart.png.
	Out string
	// Sizes are the message sizes in bytes; default 1 KB and 100 KB.
	Sizes []int
	// Steps are the concurrency steps; default 1, 10, 50.
	Steps []int
	// Rounds each measure every path once per size and step; default 3.
	Rounds int
	// Counts are the messages per cell by size; CountsAtOne at concurrency 1.
	Counts, CountsAtOne map[int]int
	// Projects is the number of projects of the scale measurement; default 10,000. Negative
	// skips it, and the large one too.
	Projects int
	// LargeProjects is the number of projects of the large scale measurement (file store only,
	// e.g. 100,000); 0 skips it. `make bench` runs it with 100,000 (not BENCH=quick): about
	// 40 seconds.
	LargeProjects int
	// ScaleOnly runs the scale measurements alone (Projects and LargeProjects), without the
	// end-to-end and distant cells.
	ScaleOnly bool
	// SkipXOAUTH2 leaves the XOAUTH2 measurement out.
	SkipXOAUTH2 bool
	// Vault keeps path A's projects in a Vault dev server (harness.BuildVaultDev must find it
	// built) instead of the file store, and counts Postern's requests to it.
	Vault bool
	// GoBench is the output of the Go benchmarks to summarise, if it exists.
	GoBench string
	// RTTs are the round-trip times of the distant cells; default 0, 10, 30, 100 ms. Negative
	// values leave the distant cells out.
	RTTs []time.Duration
	// DistantProjects are the numbers of projects of the distant cells; default 1, 100, 1000.
	DistantProjects []int
	// DistantRounds each measure every distant cell once; default 1.
	DistantRounds int
	// DistantSize is the message size of the distant cells; default 1 KB.
	DistantSize int
	// DistantPerMailbox is how many messages each project's mailbox sends in a distant cell
	// (at least 150 messages in all); default 5. A client's server sends many messages: with one
	// per mailbox, every delivery would find its mailbox cold and Postern's pool could not help.
	DistantPerMailbox int
}

// distantCount is how many messages a distant cell over n projects submits: perMailbox per
// project's mailbox, at least 150.
func distantCount(n, perMailbox int) int { return max(150, perMailbox*n) }

func (o *Options) defaults() {
	if len(o.Sizes) == 0 {
		o.Sizes = []int{1024, 100 * 1024}
	}
	if len(o.Steps) == 0 {
		o.Steps = []int{1, 10, 50}
	}
	if o.Rounds <= 0 {
		o.Rounds = 3
	}
	if o.Counts == nil {
		o.Counts = map[int]int{1024: 800, 100 * 1024: 500}
	}
	if o.CountsAtOne == nil {
		o.CountsAtOne = map[int]int{1024: 400, 100 * 1024: 250}
	}
	if o.Projects == 0 {
		o.Projects = 10000
	}
	if len(o.RTTs) == 0 {
		o.RTTs = []time.Duration{0, 10 * time.Millisecond, 30 * time.Millisecond, 100 * time.Millisecond}
	}
	if len(o.DistantProjects) == 0 {
		o.DistantProjects = []int{1, 100, 1000}
	}
	if o.DistantRounds <= 0 {
		o.DistantRounds = 1
	}
	if o.DistantSize == 0 {
		o.DistantSize = 1024
	}
	if o.DistantPerMailbox <= 0 {
		o.DistantPerMailbox = 5
	}
}

func (o *Options) distant() bool { return len(o.RTTs) > 0 && o.RTTs[0] >= 0 }

func (o *Options) count(size, conc int) int {
	m := o.Counts
	if conc == 1 {
		m = o.CountsAtOne
	}
	if n, ok := m[size]; ok {
		return n
	}
	return 200
}

// Run runs every measurement and writes the results to opts.Out.
func Run(r *Runner, opts Options) *Results {
	opts.defaults()
	res := &Results{Started: time.Now(), Machine: machine()}
	res.Config = Config{Sizes: opts.Sizes, Steps: opts.Steps, Rounds: opts.Rounds, Counts: opts.Counts, CountsAtOne: opts.CountsAtOne}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	maxConc := 0
	for _, s := range opts.Steps {
		maxConc = max(maxConc, s)
	}

	if !opts.ScaleOnly {
		relay := r.Sub()
		r.Step("starting the sinks, postern and the front postfix")
		distantN := 0
		if opts.distant() {
			distantN = slices.Max(opts.DistantProjects)
		}
		rl := StartRelay(relay, RelayOptions{Bin: opts.Bin, MaxConcurrency: maxConc, Vault: opts.Vault, DistantProjects: distantN})

		r.Step("measuring the sink alone")
		users := rl.sinkUsers()
		for _, l := range []struct {
			mode              string
			size, conc, count int
		}{
			{LoadPooled, 1024, maxConc, 10000},
			{LoadPooled, 100 * 1024, maxConc, 2000},
			{LoadPerMessage, 1024, maxConc, 2000},
		} {
			s, err := LoadSink(ctx, rl.Auth, rl.CA.ClientTLS("127.0.0.1"), "bench-b", users["bench-b"], l.mode, l.size, l.conc, l.count)
			if err != nil {
				r.Fatalf("%v", err)
			}
			r.Logf("%s %s c%d: %.0f msg/s", s.Mode, sizeLabel(s.Size), s.Concurrency, s.Rate)
			res.Sink = append(res.Sink, s)
		}

		r.Step("warming up the four paths")
		if err := rl.Warm(ctx, PathPlain, PathPostern, PathDirect, PathDirectFull); err != nil {
			r.Fatalf("%v", err)
		}
		before, err := rl.Metrics(ctx)
		if err != nil {
			r.Fatalf("%v", err)
		}
		t0 := time.Now()
		for _, size := range opts.Sizes {
			for round := 1; round <= opts.Rounds; round++ {
				for i, conc := range opts.Steps {
					// Each path goes first, second, third and last in turn.
					paths := []string{PathPostern, PathDirect, PathPlain, PathDirectFull}
					n := (round + i) % len(paths)
					order := append(slices.Clone(paths[n:]), paths[:n]...)
					r.Step("%s, round %d, concurrency %d: %s", sizeLabel(size), round, conc, strings.Join(order, ", "))
					for _, path := range order {
						c, err := rl.Measure(ctx, path, size, conc, opts.count(size, conc), round)
						if err != nil {
							r.Fatalf("%v", err)
						}
						r.Logf("%-8s %7.1f msg/s  (%d in %.2fs; postern CPU %.2fs, sessions %d; sink conns %d; CPU busy %.0f%%: %s)",
							path, c.Rate, c.Count, c.Seconds, c.PosternCPUSeconds, c.PosternSessions, c.SinkConns, 100*c.CPUBusy, formatShares(c.CPUTop))
						res.Cells = append(res.Cells, c)
					}
				}
			}
		}
		after, err := rl.Metrics(ctx)
		if err != nil {
			r.Fatalf("%v", err)
		}
		store := "file"
		if opts.Vault {
			store = "vault"
		}
		res.Store = storeReads(before, after, time.Since(t0), res.Cells, store)

		for _, size := range opts.Sizes {
			r.Step("Postern's added latency per message: path A, %s at concurrency 1", sizeLabel(size))
			c, err := rl.Measure(ctx, PathPostern, size, 1, addedMessages, 0)
			if err != nil {
				r.Fatalf("%v", err)
			}
			if c.AddedP99Micro == 0 {
				r.Fatalf("Postern's delivery log and the sink do not count the same %d messages", addedMessages)
			}
			r.Logf("p50 %.0f µs, p99 %.0f µs", c.AddedP50Micro, c.AddedP99Micro)
			res.Added = append(res.Added, AddedLatency{Size: size, Messages: addedMessages, P50Micro: c.AddedP50Micro, P99Micro: c.AddedP99Micro})
		}

		for _, size := range opts.Sizes {
			const d = 3 * time.Second
			conc := min(10, maxConc)
			r.Step("profiling postern for %s: path A, %s at concurrency %d", d, sizeLabel(size), conc)
			// Enough messages to keep Postern busy for the whole profile.
			count := opts.count(size, conc) * 2
			p, err := rl.ProfilePostern(ctx, opts.Out, size, conc, count, d)
			if err != nil {
				r.Fatalf("%v", err)
			}
			res.Profiles = append(res.Profiles, p)
		}

		if !opts.SkipXOAUTH2 {
			r.Step("XOAUTH2: starting the OAuth 2.0 server and adding an OAuth project")
			x := rl.StartXOAUTH2(relay, XOAUTH2Options{FreshFor: 4 * time.Second, MaxConcurrency: maxConc})
			if err := rl.Warm(ctx, PathXOAUTH2); err != nil {
				r.Fatalf("%v", err)
			}
			r.Step("XOAUTH2: measuring with tokens refreshed every ~2s")
			xr, err := rl.MeasureXOAUTH2(ctx, x, 1024, []int{10, maxConc}, opts.Counts[1024]*2)
			if err != nil {
				r.Fatalf("%v", err)
			}
			for _, c := range xr.Cells {
				r.Logf("%s c%d: %.1f msg/s (%d in %.2fs)", PathXOAUTH2, c.Concurrency, c.Rate, c.Count, c.Seconds)
			}
			r.Logf("refreshes %d, waits %d (derived from the log: %d), tokens validated %d", xr.Refreshes, xr.RefreshWaits, xr.RefreshWaitsDerived, xr.TokensSeen)
			res.XOAUTH2 = &xr
		}
		if opts.distant() {
			for round := 1; round <= opts.DistantRounds; round++ {
				for _, rtt := range opts.RTTs {
					for _, n := range opts.DistantProjects {
						// A and B take turns going first.
						paths := []string{PathDistantA, PathDistantB}
						if (round+n+int(rtt.Milliseconds()))%2 == 1 {
							paths[0], paths[1] = paths[1], paths[0]
						}
						r.Step("distant upstream: RTT %s, %d projects, round %d", rtt, n, round)
						for _, path := range paths {
							c, err := rl.MeasureDistant(ctx, path, rtt, n, opts.DistantSize, distantCount(n, opts.DistantPerMailbox), round)
							if err != nil {
								r.Fatalf("%v", err)
							}
							r.Logf("%-15s %7.1f msg/s  (%d of %d in %.2fs; queue delay p50 %.2fs p99 %.2fs; %.2f conns/msg; 421: %d; deferrals %d; postern %.3f ms/msg; slots busy mean %.1f max %d)",
								path, c.Rate, c.Delivered, c.Count, c.Seconds, c.QueueP50, c.QueueP99, c.ConnsPerMsg, c.Refused, c.Deferrals, c.PosternCPUms, c.SlotsBusyMean, c.SlotsBusyMax)
							res.DistantCells = append(res.DistantCells, c)
						}
					}
				}
			}
		}
		relay.Close()
	}

	if opts.Projects > 0 {
		r.Step("scale: %d projects", opts.Projects)
		scale := r.Sub()
		s := RunScale(scale, ScaleOptions{Bin: opts.Bin, Projects: opts.Projects, Lookups: 20000, IdleFor: 12 * time.Second})
		r.Logf("start-up %.2fs, RSS %.1f MB, socketmap %.0f µs", s.StartupSeconds, s.RSSMB, s.SocketmapMeanMicro)
		scale.Close()
		res.Scale = &s
		if opts.LargeProjects > 0 {
			r.Step("scale: %d projects", opts.LargeProjects)
			scale := r.Sub()
			s := RunScale(scale, ScaleOptions{Bin: opts.Bin, Projects: opts.LargeProjects, Lookups: 20000, IdleFor: 12 * time.Second})
			r.Logf("start-up %.2fs, RSS %.1f MB, socketmap mean %.0f µs, p99 %.0f µs", s.StartupSeconds, s.RSSMB, s.SocketmapMeanMicro, s.SocketmapP99Micro)
			scale.Close()
			res.ScaleLarge = &s
		}
		if opts.Vault {
			r.Step("scale: %d projects in Vault", opts.Projects)
			scale := r.Sub()
			vs := RunScaleVault(scale, VaultScaleOptions{Bin: opts.Bin, Projects: opts.Projects, FullScanInterval: 15 * time.Second})
			r.Logf("full scan %.1fs (%d requests), RSS %.1f MB after it", vs.FullScanSeconds, vs.FullScanRequests, vs.AfterScanRSSMB)
			scale.Close()
			res.ScaleVault = &vs
		}
	}

	if opts.GoBench != "" {
		if gb, err := ReadGoBench(opts.GoBench); err == nil {
			res.GoBench = gb
		} else if !os.IsNotExist(err) {
			r.Fatalf("reading %s: %v", opts.GoBench, err)
		}
	}
	res.Summarize()
	res.Evaluate()
	res.TotalSeconds = time.Since(res.Started).Seconds()
	if err := os.MkdirAll(opts.Out, 0o755); err != nil {
		r.Fatalf("%v", err)
	}
	if err := res.WriteJSON(filepath.Join(opts.Out, "results.json")); err != nil {
		r.Fatalf("%v", err)
	}
	if opts.ScaleOnly {
		return res // no throughput to chart
	}
	if err := res.WriteChart(filepath.Join(opts.Out, "chart.png")); err != nil {
		r.Fatalf("%v", err)
	}
	return res
}

// storeReads relates the growth of Postern's store reads to the messages of path A in cells.
func storeReads(before, after string, d time.Duration, cells []Cell, store string) StoreReads {
	b, _ := harness.MetricValue(before, "postern_store_project_reads_total")
	a, _ := harness.MetricValue(after, "postern_store_project_reads_total")
	iv := ProductionReloadInterval.Seconds()
	s := StoreReads{Reads: int64(a - b), Seconds: d.Seconds(), ReloadInterval: iv, Store: store}
	for _, c := range cells {
		if c.Round == 0 {
			continue
		}
		if c.Path != PathPostern {
			s.OtherReads += c.StoreReads
			s.OtherMessages += int64(c.Count)
			continue
		}
		s.PosternReads += c.StoreReads
		for k, n := range c.VaultRequests {
			if s.VaultRequests == nil {
				s.VaultRequests = map[string]int{}
			}
			s.VaultRequests[k] += n
			if strings.HasPrefix(k, "GET secret/data/postern/projects/") || strings.HasPrefix(k, "GET secret/data/postern/tokens/") {
				s.VaultRecordReads += n
			}
		}
		s.PosternSeconds += c.Seconds
		s.Periodic += int64(math.Floor(c.Seconds/iv)) + 1
		s.Deliveries += int64(c.Count)
	}
	if s.Deliveries > 0 {
		s.PerMessage = float64(s.PosternReads) / float64(s.Deliveries)
		s.ExtraPerMessage = float64(max(0, s.PosternReads-s.Periodic)) / float64(s.Deliveries)
	}
	return s
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m.Postfix = harness.PostfixVersion(ctx)
	return m
}
