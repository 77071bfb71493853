package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/integration/bench/sink"
	"github.com/postern/postern/integration/harness"
)

// Paths measured end to end.
const (
	// PathPostern is path A: front Postfix → Postern (LMTP) → the sink, STARTTLS + AUTH PLAIN over
	// Postern's pooled, signed-in connections.
	PathPostern = "postern"
	// PathDirect is path B: front Postfix's own SMTP client → the sink, STARTTLS + AUTH PLAIN with
	// sender-dependent relayhost and authentication (no connection cache).
	PathDirect = "direct"
	// PathDirectFull (B-full) is path B without Postfix's TLS session cache (Postfix's default): a full TLS
	// handshake for every message.
	PathDirectFull = "direct-full"
	// PathPlain is Postfix's plain relay to the sink: no TLS, no AUTH, connection cache on demand.
	PathPlain = "plain"
)

// Senders of the three paths. Postern routes only the first.
const (
	senderPostern = "bench-a@postern.test"
	senderDirect  = "bench-b@direct.test"
	senderFull    = "bench-f@direct-full.test"
	senderPlain   = "bench-p@plain.test"
)

// RelayOptions configure StartRelay.
type RelayOptions struct {
	// Bin is the postern binary.
	Bin string
	// MaxConcurrency is the largest concurrency step: Postern's project may open that many
	// upstream connections.
	MaxConcurrency int
	// Vault keeps Postern's projects in a Vault dev server (harness.StartVault), reached through
	// a proxy that counts its requests, instead of the embedded file store.
	Vault bool
	// DistantProjects is the number of projects per path of the distant cells (distant.go); 0
	// leaves them out.
	DistantProjects int
}

// Relay is the running setup of the end-to-end measurements: the sinks, Postern with one
// project, and the front Postfix with the three paths.
type Relay struct {
	Dir       string
	CA        *harness.CA
	Plain     *sink.Sink // no TLS, no AUTH
	Auth      *sink.Sink // STARTTLS + AUTH PLAIN
	XOAuth    *sink.Sink // STARTTLS + AUTH XOAUTH2, once StartXOAUTH2 ran
	Postern   *harness.Postern
	Front     *harness.Front
	Vault     *harness.VaultProxy // nil with the file store
	TLSConfig *tls.Config

	distant *distant // the distant cells' sink and proxy, if any

	conc  int               // the concurrency the front is set to
	users map[string]string // the authenticating sink's users and passwords
}

func (rl *Relay) sinkUsers() map[string]string { return rl.users }

// benchFrontMain is appended to the front Postfix's main.cf: what every path shares. Postfix's
// SMTP client caches TLS sessions as Debian's main.cf has it (path B-full turns that off); the direct
// paths' settings live in their own master.cf services so that the plain path keeps Postfix's
// connection cache.
const benchFrontMain = `# Benchmarks: the same for every path.
default_process_limit = 150
default_destination_recipient_limit = 50
smtp_tls_session_cache_database = btree:${data_directory}/smtp_scache
smtp_tls_CAfile = %[1]s
# The direct path, as an operator without Postern relays a sender through its organisation's
# server: sender-dependent relayhost and sender-dependent SASL authentication over TLS.
sender_dependent_relayhost_maps = inline:{ {%[2]s = [127.0.0.1]:%[3]d}, {%[6]s = [127.0.0.1]:%[3]d} }
bench_direct_sasl_maps = inline:{ {%[2]s = %[4]s:%[5]s}, {%[6]s = %[4]s:%[5]s} }
`

// benchDirectService holds the direct paths' SMTP clients (B, and B-full without the TLS session
// cache, Postfix's default). Sender-dependent authentication turns
// Postfix's connection cache off for it, which is why it is its own service.
const benchDirectService = `# Benchmarks: the direct path (B).
bdirect   unix  -       -       n       -       -       smtp
  -o syslog_name=postfix/bdirect
  -o smtp_tls_security_level=encrypt
  -o smtp_sasl_auth_enable=yes
  -o smtp_sender_dependent_authentication=yes
  -o smtp_sasl_password_maps=$bench_direct_sasl_maps
  -o smtp_sasl_security_options=noanonymous
  -o smtp_sasl_tls_security_options=noanonymous
bfull     unix  -       -       n       -       -       smtp
  -o syslog_name=postfix/bfull
  -o smtp_tls_security_level=encrypt
  -o smtp_tls_session_cache_database=
  -o smtp_sasl_auth_enable=yes
  -o smtp_sender_dependent_authentication=yes
  -o smtp_sasl_password_maps=$bench_direct_sasl_maps
  -o smtp_sasl_security_options=noanonymous
  -o smtp_sasl_tls_security_options=noanonymous
`

// StartRelay starts the sinks, Postern with the project of path A and the front Postfix.
func StartRelay(r harness.T, opts RelayOptions) *Relay {
	r.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := harness.TempDir(r)
	ca, err := harness.NewCA(filepath.Join(dir, "ca"), "sink.test")
	if err != nil {
		r.Fatalf("%v", err)
	}
	cert, err := tls.LoadX509KeyPair(ca.CertFile, ca.KeyFile)
	if err != nil {
		r.Fatalf("loading the sink's certificate: %v", err)
	}
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	users := map[string]string{"bench-a": harness.NewID(), "bench-b": harness.NewID()}

	rl := &Relay{Dir: dir, CA: ca, TLSConfig: tlsCfg, users: users}
	if rl.Plain, err = sink.Start(sink.Options{}); err != nil {
		r.Fatalf("%v", err)
	}
	r.Cleanup(func() { rl.Plain.Close() })
	if rl.Auth, err = sink.Start(sink.Options{TLS: tlsCfg, Users: users}); err != nil {
		r.Fatalf("%v", err)
	}
	r.Cleanup(func() { rl.Auth.Close() })

	var storeYAML string
	var v *harness.Vault
	if opts.Vault {
		v = harness.StartVault(r)
		rl.Vault = harness.StartVaultProxy(r, v)
		tokenFile := filepath.Join(dir, "vault-token")
		if err := os.WriteFile(tokenFile, []byte(v.RootToken+"\n"), 0o600); err != nil {
			r.Fatalf("%v", err)
		}
		storeYAML = fmt.Sprintf("  vault:\n    address: %s\n    auth:\n      token_file: %s", rl.Vault.Addr, tokenFile)
	}
	rl.Postern, err = harness.NewPostern(harness.PosternOptions{Bin: opts.Bin, Dir: filepath.Join(dir, "postern"), LogLevel: "info",
		ExtraConfig: "debug: {pprof: true}", Store: storeYAML})
	if err != nil {
		r.Fatalf("%v", err)
	}
	if err := productionReload(rl.Postern); err != nil {
		r.Fatalf("%v", err)
	}
	if opts.DistantProjects > 0 {
		rl.distant = startDistant(r, rl, opts.DistantProjects)
		pem, err := os.ReadFile(ca.CAFile)
		if err != nil {
			r.Fatalf("%v", err)
		}
		if err := writeDistantProjects(ctx, rl, v, rl.distant.projectsA(string(pem))); err != nil {
			r.Fatalf("%v", err)
		}
	}
	harness.StartPostern(r, rl.Postern)
	if _, err := rl.Postern.CLI(ctx, users["bench-a"]+"\n", "project", "add",
		"--sender", senderPostern, "--host", "127.0.0.1", "--port", strconv.Itoa(rl.Auth.Port()),
		"--tls", "starttls", "--username", "bench-a", "--password-stdin", "--ca-file", ca.CAFile,
		"--max-connections", strconv.Itoa(opts.MaxConcurrency), "bench-a"); err != nil {
		r.Fatalf("%v", err)
	}
	if err := rl.Postern.WaitRouted(ctx, senderPostern, true); err != nil {
		r.Fatalf("%v", err)
	}

	main := fmt.Sprintf(benchFrontMain, ca.CAFile, senderDirect, rl.Auth.Port(), "bench-b", users["bench-b"], senderFull)
	rl.Front = harness.StartFront(r, dir, harness.FrontOptions{
		RunDir: rl.Postern.Dir, RelayAddr: rl.Plain.Addr(), Main: main, AllowWarnings: true,
	})
	// Path B's and B-full's senders go to their own services; Postern's socketmap stays first, as contrib has it.
	maps, err := rl.Front.Param(ctx, "sender_dependent_default_transport_maps")
	if err != nil {
		r.Fatalf("%v", err)
	}
	maps = strings.ReplaceAll(maps, rl.Postern.Dir, "$postern_run_dir")
	if err := rl.Front.Postconf(ctx, fmt.Sprintf("sender_dependent_default_transport_maps=%s, inline:{ {%s = bdirect:}, {%s = bfull:} }", maps, senderDirect, senderFull)); err != nil {
		r.Fatalf("%v", err)
	}
	if err := rl.Front.AddServices(benchDirectService); err != nil {
		r.Fatalf("%v", err)
	}
	if d := rl.distant; d != nil {
		relayhost, sasl, transport, err := d.frontMaps(dir, d.proxy.Port())
		if err != nil {
			r.Fatalf("%v", err)
		}
		set := []string{"default_process_limit=100"}
		for _, m := range []struct{ name, add string }{
			{"sender_dependent_relayhost_maps", relayhost}, {"bench_direct_sasl_maps", sasl}, {"sender_dependent_default_transport_maps", transport},
		} {
			cur, err := rl.Front.Param(ctx, m.name)
			if err != nil {
				r.Fatalf("%v", err)
			}
			set = append(set, m.name+"="+strings.ReplaceAll(cur, rl.Postern.Dir, "$postern_run_dir")+", "+m.add)
		}
		if err := rl.Front.Postconf(ctx, set...); err != nil {
			r.Fatalf("%v", err)
		}
	}
	if err := rl.SetConcurrency(ctx, 1); err != nil {
		r.Fatalf("%v", err)
	}
	return rl
}

// SetConcurrency sets every path's destination concurrency (initial and limit) to n and reloads
// the front Postfix.
func (rl *Relay) SetConcurrency(ctx context.Context, n int) error {
	if rl.conc == n {
		return nil
	}
	v := strconv.Itoa(n)
	err := rl.Front.Postconf(ctx,
		"default_destination_concurrency_limit="+v,
		"initial_destination_concurrency="+v,
		"postern_destination_concurrency_limit="+v,
		"postern_initial_destination_concurrency="+v)
	if err != nil {
		return err
	}
	if err := rl.Front.Reload(ctx); err != nil {
		return err
	}
	// The master applies a reload asynchronously; the queue manager restarts.
	time.Sleep(1500 * time.Millisecond)
	rl.conc = n
	return nil
}

// sinkOf returns the sink a path delivers to and its sender.
func (rl *Relay) sinkOf(path string) (*sink.Sink, string) {
	switch path {
	case PathPostern:
		return rl.Auth, senderPostern
	case PathDirect:
		return rl.Auth, senderDirect
	case PathDirectFull:
		return rl.Auth, senderFull
	case PathXOAUTH2:
		return rl.XOAuth, senderXOAUTH2
	}
	return rl.Plain, senderPlain
}

// Cell is one measurement: Count messages of Size bytes from one path at one concurrency.
type Cell struct {
	Path        string `json:"path"`
	Size        int    `json:"size_bytes"`
	Concurrency int    `json:"concurrency"`
	Round       int    `json:"round"`
	Count       int    `json:"messages"`
	// Seconds is from the first submission until the last message arrived at the sink.
	Seconds float64 `json:"seconds"`
	// Rate is Count / Seconds: messages per second through the whole path.
	Rate float64 `json:"msgs_per_sec"`
	// SubmitSeconds is how long smtp-source took to hand every message to the front Postfix.
	SubmitSeconds float64 `json:"submit_seconds"`
	// PosternCPUSeconds is the CPU time postern serve used during the cell.
	PosternCPUSeconds float64 `json:"postern_cpu_seconds"`
	// SinkConns and SinkAuths are the connections and sign-ins the sink saw during the cell.
	SinkConns int64 `json:"sink_conns"`
	SinkAuths int64 `json:"sink_auths"`
	// CPUBusy is the fraction of the machine's CPU time in use during the cell (1 = every core
	// busy); CPUTop are the commands that used the most of it.
	CPUBusy float64    `json:"cpu_busy"`
	CPUTop  []CPUShare `json:"cpu_top"`
	// StoreReads is the growth of postern_store_project_reads_total during the cell.
	StoreReads int64 `json:"store_reads"`
	// PosternSessions is the growth of postern_sessions_total: the connections Postfix opened
	// to Postern.
	PosternSessions int64 `json:"postern_sessions"`
	// VaultRequests are the requests Postern made to Vault during the cell, by method and path
	// (with the Vault store).
	VaultRequests map[string]int `json:"vault_requests,omitempty"`
	// AddedP50Micro and AddedP99Micro are Postern's added latency per message (added.go), in
	// microseconds: path A at concurrency 1 only.
	AddedP50Micro float64 `json:"added_latency_p50_us,omitempty"`
	AddedP99Micro float64 `json:"added_latency_p99_us,omitempty"`
}

// Measure submits count messages of size bytes from path's sender with conc smtp-source sessions
// and waits until the sink has them all.
func (rl *Relay) Measure(ctx context.Context, path string, size, conc, count, round int) (Cell, error) {
	if err := rl.SetConcurrency(ctx, conc); err != nil {
		return Cell{}, err
	}
	s, from := rl.sinkOf(path)
	rcpt := fmt.Sprintf("%s-%d-c%d-r%d-%s@sink.test", path, size, conc, round, harness.NewID()[:6])
	c := Cell{Path: path, Size: size, Concurrency: conc, Round: round, Count: count}
	before := s.Counts()
	pid := rl.Postern.PID()
	cpu0, _ := procCPU(pid)
	sample0 := sampleCPU()
	vault0 := rl.vaultCounts()
	reads0, sessions0, err := rl.posternCounters(ctx)
	if err != nil {
		return Cell{}, err
	}

	timed := path == PathPostern && conc == 1 // Postern's added latency, per message
	logFrom := 0
	if timed {
		logFrom = len(rl.Postern.Log())
	}
	t0 := time.Now()
	type submission struct {
		err error
		dur time.Duration
	}
	submitted := make(chan submission, 1)
	go func() {
		err := harness.RunSMTPSource(ctx, harness.SMTPSourceOptions{
			Addr: rl.Front.SMTPAddr(), From: from, To: rcpt, Size: size, Count: count, Sessions: conc,
		})
		submitted <- submission{err, time.Since(t0)}
	}()
	var subErr error
	subDone := false
	err = pollUntil(ctx, 2*time.Millisecond, func() bool {
		if !subDone {
			select {
			case sub := <-submitted:
				subDone, subErr, c.SubmitSeconds = true, sub.err, sub.dur.Seconds()
			default:
			}
		}
		return subErr != nil || (subDone && s.Arrivals(rcpt).Count >= int64(count))
	})
	if subErr != nil {
		return c, subErr
	}
	a := s.Arrivals(rcpt)
	if err != nil {
		return c, fmt.Errorf("%s, %d bytes, concurrency %d: %d of %d messages arrived: %w\n%s",
			path, size, conc, a.Count, count, err, rl.describeQueue(ctx))
	}
	cpu1, _ := procCPU(pid)
	c.CPUBusy, c.CPUTop = cpuDelta(sample0, sampleCPU(), 6)
	after := s.Counts()
	c.Seconds = a.Last.Sub(t0).Seconds()
	c.Rate = float64(count) / c.Seconds
	c.PosternCPUSeconds = cpu1 - cpu0
	c.SinkConns, c.SinkAuths = after.Conns-before.Conns, after.Auths-before.Auths
	reads1, sessions1, err := rl.posternCounters(ctx)
	if err != nil {
		return c, err
	}
	c.StoreReads, c.PosternSessions = reads1-reads0, sessions1-sessions0
	c.VaultRequests = countsDelta(vault0, rl.vaultCounts())
	// Postfix removes a queue file just after the delivery agent's success: wait for that, so
	// that the next cell starts with an empty queue.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := rl.Front.WaitQueueEmpty(wctx); err != nil {
		return c, err
	}
	if timed {
		// Postern logs a delivery just after its reply to Postfix.
		var ds []time.Duration
		_ = pollUntil(wctx, 5*time.Millisecond, func() bool {
			ds = posternDurations(rl.Postern.Log()[logFrom:], "bench-a")
			return len(ds) >= count
		})
		c.AddedP50Micro, c.AddedP99Micro, _ = addedLatency(ds, s.Timings(rcpt))
	}
	return c, nil
}

func (rl *Relay) describeQueue(ctx context.Context) string {
	q, err := rl.Front.Queue(ctx)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "front queue: %d messages", len(q))
	for i, m := range q {
		if i == 3 {
			break
		}
		for _, r := range m.Recipients {
			fmt.Fprintf(&b, "\n  %s <%s> → %s: %s", m.QueueID, m.Sender, r.Address, r.DelayReason)
		}
	}
	logTail := rl.Front.LogWarnings()
	if len(logTail) > 10 {
		logTail = logTail[len(logTail)-10:]
	}
	b.WriteString("\nfront warnings:\n" + strings.Join(logTail, "\n"))
	return b.String()
}

func (rl *Relay) vaultCounts() map[string]int {
	if rl.Vault == nil {
		return nil
	}
	return rl.Vault.Counts()
}

// countsDelta is after minus before, without the zeros; nil for none.
func countsDelta(before, after map[string]int) map[string]int {
	var d map[string]int
	for k, n := range after {
		if n > before[k] {
			if d == nil {
				d = map[string]int{}
			}
			d[k] = n - before[k]
		}
	}
	return d
}

// posternCounters returns postern_store_project_reads_total and postern_sessions_total.
func (rl *Relay) posternCounters(ctx context.Context) (reads, sessions int64, err error) {
	m, err := rl.Postern.Get(ctx, "/metrics")
	if err != nil {
		return 0, 0, err
	}
	r, ok := harness.MetricValue(m, "postern_store_project_reads_total")
	if !ok {
		return 0, 0, fmt.Errorf("postern's /metrics has no postern_store_project_reads_total")
	}
	n, ok := harness.MetricValue(m, "postern_sessions_total")
	if !ok {
		return 0, 0, fmt.Errorf("postern's /metrics has no postern_sessions_total")
	}
	return int64(r), int64(n), nil
}

// Metrics returns Postern's /metrics text.
func (rl *Relay) Metrics(ctx context.Context) (string, error) { return rl.Postern.Get(ctx, "/metrics") }

// Warm sends a few messages through each path and waits for them, so that the TLS session cache,
// Postern's pool and Postfix's processes are in their steady state.
func (rl *Relay) Warm(ctx context.Context, paths ...string) error {
	for _, p := range paths {
		if _, err := rl.Measure(ctx, p, 1024, 1, 3, 0); err != nil {
			return fmt.Errorf("warming up path %s: %w", p, err)
		}
	}
	return nil
}
